"""A trace's prefix-block hashes as a radix tree of block runs.

Serving engines hash a KV block together with everything before it (vLLM's and SGLang's block
hashes are chained), so two requests share block ``k`` only if they share blocks ``0..k``: the
hash lists of a trace are paths in a tree whose nodes are blocks. Agentic traffic makes these
paths long (a 100k-token context is some 1,600 blocks of 64 tokens) and heavily shared (each
step resends the previous step's context), so the simulator does not work block by block.

A :class:`PrefixTree` compresses chains of blocks that are always used together into
*segments*: a segment is a run of blocks along which the tree does not branch and no request's
path ends. Every request's path is then a sequence of whole segments from the root, usually a
few dozen where it had thousands of blocks, and a prefix cache can hold, touch and evict
segments (with a block count) instead of blocks. Only equality of hashes matters; if a trace's
hashes are not chained (one hash seen after two different parents), the tree is built on the
chained key ``(parent node, hash)`` instead, so the prefix semantics are the same either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(eq=False)
class PrefixTree:
    """Segments of the block tree and the last segment of every request's path.

    ``parent[s]`` is the segment before ``s`` on every path through it (-1 at the root),
    ``start_block[s]`` the path position of its first block, ``blocks[s]`` its length, and
    ``key_base[s]`` the global key of its first block (block ``b`` of ``s`` has key
    ``key_base[s] + b``, unique across the tree). ``request_segment[i]`` is the last segment of
    request ``i``'s path, or -1 when the request has no hashes.
    """

    parent: np.ndarray
    start_block: np.ndarray
    blocks: np.ndarray
    key_base: np.ndarray
    request_segment: np.ndarray
    _parents: list[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # A Python list walks faster than numpy scalars.
        self._parents = self.parent.tolist()

    @property
    def num_segments(self) -> int:
        """Number of segments."""
        return len(self.parent)

    def path(self, i: int) -> list[int]:
        """Segments of request ``i``'s path, root first (empty when it has no hashes)."""
        parent = self._parents
        s = int(self.request_segment[i])
        out: list[int] = []
        while s >= 0:
            out.append(s)
            s = parent[s]
        out.reverse()
        return out

    def path_lengths(self) -> np.ndarray:
        """Blocks on every request's path (the lengths of the hash lists), as an array."""
        lengths = np.zeros(len(self.request_segment), dtype=np.int64)
        has = self.request_segment >= 0
        last = self.request_segment[has]
        lengths[has] = self.start_block[last] + self.blocks[last]
        return lengths

    def path_blocks(self, i: int) -> int:
        """Blocks on request ``i``'s path (the length of its hash list)."""
        s = int(self.request_segment[i])
        return int(self.start_block[s] + self.blocks[s]) if s >= 0 else 0


def _node_ids(offsets: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense node id of every hash entry and the parent node of each node (-1 at the root)."""
    n_entries = len(values)
    first = np.zeros(n_entries, dtype=bool)
    starts = offsets[:-1][np.diff(offsets) > 0]
    first[starts] = True
    unique, node = np.unique(values, return_inverse=True)
    node = node.astype(np.int64, copy=False)
    parent_entry = np.empty(n_entries, dtype=np.int64)
    parent_entry[0] = -1
    parent_entry[1:] = node[:-1]
    parent_entry[first] = -1
    parent = np.full(len(unique), -2, dtype=np.int64)
    parent[node] = parent_entry
    if np.array_equal(parent[node], parent_entry):
        return node, parent
    return _chained_node_ids(offsets, values)


def _chained_node_ids(offsets: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Node ids keyed on ``(parent node, hash)``, for traces whose hashes are not chained."""
    index: dict[tuple[int, int], int] = {}
    parents: list[int] = []
    node = np.empty(len(values), dtype=np.int64)
    vals = values.tolist()
    offs = offsets.tolist()
    for r in range(len(offs) - 1):
        prev = -1
        for e in range(offs[r], offs[r + 1]):
            key = (prev, vals[e])
            v = index.get(key)
            if v is None:
                v = index[key] = len(parents)
                parents.append(prev)
            node[e] = v
            prev = v
    return node, np.asarray(parents, dtype=np.int64)


def build_prefix_tree(offsets: np.ndarray, values: np.ndarray) -> PrefixTree:
    """The :class:`PrefixTree` of CSR hash lists (request ``i``'s hashes are
    ``values[offsets[i]:offsets[i+1]]``), in time linear in the entries after one sort."""
    n_requests = len(offsets) - 1
    request_segment = np.full(n_requests, -1, dtype=np.int64)
    if len(values) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return PrefixTree(empty, empty.copy(), empty.copy(), empty.copy(), request_segment)
    node, parent = _node_ids(np.asarray(offsets, dtype=np.int64), np.asarray(values))
    n_nodes = len(parent)
    lengths = np.diff(offsets)
    has = lengths > 0
    last_node = node[offsets[1:][has] - 1]
    depth = np.empty(n_nodes, dtype=np.int64)
    depth[node] = np.arange(len(values), dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    # A node heads a segment unless its parent has this one child and no path ends there.
    children = np.bincount(parent[parent >= 0], minlength=n_nodes)
    ends = np.zeros(n_nodes, dtype=bool)
    ends[last_node] = True
    has_parent = parent >= 0
    head = ~has_parent
    p = parent[has_parent]
    head[has_parent] = (children[p] != 1) | ends[p]
    # Each node's segment head, by pointer doubling along parents (log of the longest chain).
    up = np.where(head, np.arange(n_nodes), parent)
    while True:
        nxt = up[up]
        if np.array_equal(nxt, up):
            break
        up = nxt
    heads = np.flatnonzero(head)
    seg_of_head = np.full(n_nodes, -1, dtype=np.int64)
    seg_of_head[heads] = np.arange(len(heads), dtype=np.int64)
    segment = seg_of_head[up]
    blocks = np.bincount(segment, minlength=len(heads)).astype(np.int64)
    head_parent = parent[heads]
    seg_parent = np.where(head_parent >= 0, segment[np.maximum(head_parent, 0)], -1)
    key_base = np.zeros(len(heads), dtype=np.int64)
    np.cumsum(blocks[:-1], out=key_base[1:])
    request_segment[has] = segment[last_node]
    return PrefixTree(seg_parent, depth[heads], blocks, key_base, request_segment)


def infinite_cache_hit_blocks(tree: PrefixTree, order: np.ndarray) -> np.ndarray:
    """Leading blocks of each request already seen by an earlier request in ``order`` (the hits
    of an infinite cache that starts cold), indexed by request."""
    hits = np.zeros(len(tree.request_segment), dtype=np.int64)
    seen = np.zeros(tree.num_segments, dtype=bool)
    start = tree.start_block.tolist()
    blocks = tree.blocks.tolist()
    for i in np.asarray(order).tolist():
        path = tree.path(i)
        k = 0
        while k < len(path) and seen[path[k]]:
            k += 1
        if k:
            last = path[k - 1]
            hits[i] = start[last] + blocks[last]
        for s in path[k:]:
            seen[s] = True
    return hits


class PrefixTreeBuilder:
    """Grows a :class:`PrefixTree` directly, for generators that know how their contexts
    extend (no per-block hash lists are ever made).

    ``extend(segment, n)`` adds ``n`` fresh blocks after ``segment`` (-1: from the root) and
    returns the new segment; ``end_at(segment, blocks)`` returns the segment whose path ends
    ``blocks`` blocks from the root along ``segment``'s path, splitting a segment in two when
    the cut falls inside it (paths through it then pass through both halves).
    """

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.start: list[int] = []
        self.blocks: list[int] = []
        self.key_base: list[int] = []
        self._next_key = 0

    def extend(self, segment: int, n_blocks: int) -> int:
        """A new segment of ``n_blocks`` fresh blocks after ``segment``."""
        if n_blocks <= 0:
            raise ValueError("a segment has at least one block")
        s = len(self.parent)
        self.parent.append(segment)
        self.start.append(self.start[segment] + self.blocks[segment] if segment >= 0 else 0)
        self.blocks.append(n_blocks)
        self.key_base.append(self._next_key)
        self._next_key += n_blocks
        return s

    def end_at(self, segment: int, n_blocks: int) -> int:
        """The segment ending exactly ``n_blocks`` blocks into ``segment``'s path (-1 for 0)."""
        if n_blocks <= 0:
            return -1
        s = segment
        while s >= 0 and self.start[s] >= n_blocks:
            s = self.parent[s]
        if s < 0:
            raise ValueError(f"the path is shorter than {n_blocks} blocks")
        cut = n_blocks - self.start[s]
        if cut >= self.blocks[s]:
            return s
        # Split s: a new head of `cut` blocks takes its place; s keeps the tail (and its id,
        # so its children and the requests ending there are unchanged).
        head = len(self.parent)
        self.parent.append(self.parent[s])
        self.start.append(self.start[s])
        self.blocks.append(cut)
        self.key_base.append(self.key_base[s])
        self.parent[s] = head
        self.start[s] += cut
        self.blocks[s] -= cut
        self.key_base[s] += cut
        return head

    def build(self, request_segment: list[int] | np.ndarray) -> PrefixTree:
        """The tree, with each request's last segment."""
        return PrefixTree(
            np.asarray(self.parent, dtype=np.int64),
            np.asarray(self.start, dtype=np.int64),
            np.asarray(self.blocks, dtype=np.int64),
            np.asarray(self.key_base, dtype=np.int64),
            np.asarray(request_segment, dtype=np.int64),
        )


def hash_lists(tree: PrefixTree) -> tuple[np.ndarray, np.ndarray]:
    """CSR hash lists ``(offsets, values)`` of a tree's requests: block ``b`` of segment ``s``
    has hash ``key_base[s] + b``."""
    lengths = tree.path_lengths()
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.empty(int(offsets[-1]), dtype=np.int64)
    for i in np.flatnonzero(lengths).tolist():
        values[offsets[i] : offsets[i + 1]] = path_hashes(tree, i)
    return offsets, values


def path_hashes(tree: PrefixTree, i: int) -> np.ndarray:
    """Hash list of request ``i`` (see :func:`hash_lists`)."""
    path = tree.path(i)
    if not path:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(
        [np.arange(tree.key_base[s], tree.key_base[s] + tree.blocks[s], dtype=np.int64) for s in path]
    )
