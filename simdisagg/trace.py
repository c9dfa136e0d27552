"""Request traces: the native JSONL format, validated at the boundary, held as columns inside.

The native format is JSONL in the shape of the public Mooncake traces, one request per line::

    {"timestamp": 0, "input_length": 6758, "output_length": 500, "hash_ids": [0, 1, 2]}

Fields (``timestamp`` in milliseconds from the trace start; lengths in tokens):

``timestamp``      arrival time of an open-loop request, ms (required).
``input_length``   prompt tokens, >= 1 (required).
``output_length``  generated tokens, >= 1 (required).
``hash_ids``       prefix-cache block hashes, one per block of ``hash_block_tokens`` tokens
                   (512 for Mooncake, the default); equal ids mean reusable KV blocks.
``request_id``     string or integer id (default: the 1-based line number).
``session_id``     the agent session or conversation the request belongs to.
``wait_for``       ids of *earlier* requests this one waits for (closed loop).
``tool_wait_ms``   tool or think time after all of ``wait_for`` completed, ms (default 0).

A request with ``wait_for`` is closed-loop: it arrives when every request it waits for has
completed, plus ``tool_wait_ms``, in simulated time; its ``timestamp`` is then only the
recorded time and is ignored. An optional first line ``{"format": "simdisagg-trace", ...}``
may set ``hash_block_tokens`` and note the trace's origin.

Each line is validated with pydantic; inside the simulator a :class:`Trace` is plain numpy
columns plus CSR arrays for the variable-length lists, so a million requests stay compact.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
)

from simdisagg.errors import TraceError
from simdisagg.prefixtree import (
    PrefixTree,
    PrefixTreeBuilder,
    build_prefix_tree,
    hash_lists,
    path_hashes,
)

DEFAULT_HASH_BLOCK_TOKENS = 512  # Mooncake's block size


class TraceLine(BaseModel):
    """Schema of one JSONL request line (the boundary check; not used per request inside)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    timestamp: float = Field(ge=0, allow_inf_nan=False)
    input_length: StrictInt = Field(ge=1)
    output_length: StrictInt = Field(ge=1)
    hash_ids: list[StrictInt] | None = None
    request_id: str | StrictInt | None = None
    session_id: str | StrictInt | None = None
    wait_for: list[str | StrictInt] | None = None
    tool_wait_ms: float = Field(default=0.0, ge=0, allow_inf_nan=False)

    @field_validator("timestamp", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("must be a number (ms from the trace start)")
        return value


class TraceHeader(BaseModel):
    """Optional first line of a native trace: format marker and trace-wide settings."""

    model_config = ConfigDict(extra="allow", frozen=True)
    format: str
    version: int = 1
    hash_block_tokens: int = Field(default=DEFAULT_HASH_BLOCK_TOKENS, ge=1)


@dataclass(slots=True, eq=False)
class Trace:
    """A request trace as columns. Index ``i`` is the request's position in the file.

    Variable-length lists (``hash_ids``, ``wait_for``) are CSR arrays: the entries of request
    ``i`` are ``values[offsets[i]:offsets[i+1]]``. ``wait_for`` entries are request indices.
    """

    source: str
    request_ids: list[str]
    timestamp_s: np.ndarray  # float64, recorded arrival (open-loop requests)
    input_tokens: np.ndarray  # int64
    output_tokens: np.ndarray  # int64
    session_index: np.ndarray  # int64, -1 when the request has no session
    session_names: list[str]
    tool_wait_s: np.ndarray  # float64
    wait_offsets: np.ndarray  # int64, len n+1
    wait_indices: np.ndarray  # int64
    _hash_offsets: np.ndarray | None  # int64, len n+1; None while only the tree is held
    _hash_values: np.ndarray | None  # int64
    hash_block_tokens: int = DEFAULT_HASH_BLOCK_TOKENS
    line_numbers: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    _prefix_tree: PrefixTree | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.request_ids)

    @property
    def closed_loop(self) -> np.ndarray:
        """Boolean mask of requests that wait for others."""
        return np.diff(self.wait_offsets) > 0

    @classmethod
    def from_prefix_tree(cls, tree: PrefixTree, **columns: Any) -> Trace:
        """A trace whose hashes are held only as a :class:`PrefixTree` (as the agentic
        generator makes them): its hash lists are made on demand, never all at once unless
        :attr:`hash_values` is asked for."""
        return cls(_hash_offsets=None, _hash_values=None, _prefix_tree=tree, **columns)

    @property
    def hash_offsets(self) -> np.ndarray:
        """CSR offsets of the hash lists (``len(trace) + 1``)."""
        if self._hash_offsets is None:
            self._materialize_hashes()
        assert self._hash_offsets is not None
        return self._hash_offsets

    @property
    def hash_values(self) -> np.ndarray:
        """All hash lists, concatenated (see :attr:`hash_offsets`)."""
        if self._hash_values is None:
            self._materialize_hashes()
        assert self._hash_values is not None
        return self._hash_values

    def _materialize_hashes(self) -> None:
        assert self._prefix_tree is not None
        self._hash_offsets, self._hash_values = hash_lists(self._prefix_tree)

    @property
    def prefix_tree_only(self) -> bool:
        """Whether the hashes are held only as a tree (no hash lists made yet)."""
        return self._hash_values is None

    def set_hash_values(self, values: np.ndarray) -> None:
        """Replace the hash ids (same lengths), e.g. to renumber them."""
        self._hash_values = values
        self._prefix_tree = None

    @property
    def has_hashes(self) -> bool:
        """Whether any request carries prefix-block hashes."""
        if self._hash_values is None:
            return bool((self.prefix_tree().request_segment >= 0).any())
        return len(self._hash_values) > 0

    def hashes_of(self, i: int) -> np.ndarray:
        """Prefix-block hashes of request ``i`` (may be empty)."""
        if self._hash_values is None:
            return path_hashes(self.prefix_tree(), i)
        assert self._hash_offsets is not None
        return self._hash_values[self._hash_offsets[i] : self._hash_offsets[i + 1]]

    def prefix_tree(self) -> PrefixTree:
        """The hash lists as a radix tree of block runs (built once, then kept)."""
        if self._prefix_tree is None:
            self._prefix_tree = build_prefix_tree(self.hash_offsets, self.hash_values)
        return self._prefix_tree

    def waits_of(self, i: int) -> np.ndarray:
        """Indices of the requests request ``i`` waits for."""
        return self.wait_indices[self.wait_offsets[i] : self.wait_offsets[i + 1]]

    def subset(self, indices: Sequence[int] | np.ndarray) -> Trace:
        """A new trace with only the given requests (waits on dropped requests are removed)."""
        idx = np.asarray(indices, dtype=np.int64)
        remap = np.full(len(self), -1, dtype=np.int64)
        remap[idx] = np.arange(len(idx))
        wait_lists = []
        for i in idx:
            mapped = remap[self.waits_of(int(i))]
            wait_lists.append(mapped[mapped >= 0])
        if self._hash_values is None:
            # Tree-held hashes: the subset shares the tree (unused segments cost nothing).
            tree = self.prefix_tree()
            hashes: dict[str, Any] = {
                "_hash_offsets": None,
                "_hash_values": None,
                "_prefix_tree": PrefixTree(tree.parent, tree.start_block, tree.blocks, tree.key_base,
                                           tree.request_segment[idx]),
            }
        else:
            lists = [self.hashes_of(int(i)) for i in idx]
            hashes = {"_hash_offsets": _offsets(lists), "_hash_values": _concat(lists)}
        return Trace(
            source=self.source,
            request_ids=[self.request_ids[int(i)] for i in idx],
            timestamp_s=self.timestamp_s[idx].copy(),
            input_tokens=self.input_tokens[idx].copy(),
            output_tokens=self.output_tokens[idx].copy(),
            session_index=self.session_index[idx].copy(),
            session_names=self.session_names,
            tool_wait_s=self.tool_wait_s[idx].copy(),
            wait_offsets=_offsets(wait_lists),
            wait_indices=_concat(wait_lists),
            hash_block_tokens=self.hash_block_tokens,
            line_numbers=self.line_numbers[idx].copy() if len(self.line_numbers) else self.line_numbers,
            **hashes,
        )


def _offsets(lists: Sequence[Sequence[int] | np.ndarray]) -> np.ndarray:
    out = np.zeros(len(lists) + 1, dtype=np.int64)
    if lists:
        np.cumsum([len(x) for x in lists], out=out[1:])
    return out


def _concat(lists: Sequence[Sequence[int] | np.ndarray]) -> np.ndarray:
    if not lists:
        return np.zeros(0, dtype=np.int64)
    flat = [x for x in lists if len(x)]
    return np.concatenate([np.asarray(x, dtype=np.int64) for x in flat]) if flat else np.zeros(0, dtype=np.int64)


def _first_error(exc: ValidationError) -> tuple[str, str]:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    name = loc[0] if loc else "?"
    if len(loc) > 1:
        name += "[" + "][".join(loc[1:]) + "]"
    msg = err["msg"]
    if err["type"] == "missing":
        msg = "is missing"
    return name, msg


class TraceBuilder:
    """Accumulates validated requests and checks cross-line rules (ids, ``wait_for``).

    Importers feed it one request at a time with the location to blame in errors.
    """

    def __init__(
        self, source: str, hash_block_tokens: int = DEFAULT_HASH_BLOCK_TOKENS, tree: PrefixTreeBuilder | None = None
    ) -> None:
        self.source = source
        self.hash_block_tokens = hash_block_tokens
        self.tree = tree  # when given, requests name their prefix as a tree segment
        self._segments: list[int] = []
        self._ids: list[str] = []
        self._index_of: dict[str, int] = {}
        self._ts: list[float] = []
        self._inp: list[int] = []
        self._out: list[int] = []
        self._sess: list[int] = []
        self._sess_names: list[str] = []
        self._sess_index: dict[str, int] = {}
        self._tool: list[float] = []
        self._waits: list[list[int]] = []
        self._hashes: list[Sequence[int]] = []
        self._lines: list[int] = []

    def add(
        self,
        *,
        line: int,
        timestamp_s: float,
        input_tokens: int,
        output_tokens: int,
        request_id: str | None = None,
        session_id: str | None = None,
        wait_for: Iterable[str] = (),
        tool_wait_s: float = 0.0,
        hash_ids: Sequence[int] | None = None,
        prefix_segment: int = -1,
    ) -> int:
        """Add one request; returns its index. Raises :class:`TraceError` naming the line.

        With a tree builder, the request's hashes are the path to ``prefix_segment`` (-1: none)
        and ``hash_ids`` must not be given."""
        if self.tree is not None and hash_ids is not None:
            raise ValueError("a tree-built trace takes prefix_segment, not hash_ids")
        rid = str(line) if request_id is None else str(request_id)
        if rid in self._index_of:
            raise TraceError(self.source, line, "request_id", f"duplicate id '{rid}'")
        waits: list[int] = []
        for wid in wait_for:
            key = str(wid)
            if key == rid:
                raise TraceError(self.source, line, "wait_for", f"request '{rid}' waits for itself (a cycle)")
            j = self._index_of.get(key)
            if j is None:
                raise TraceError(
                    self.source,
                    line,
                    "wait_for",
                    f"names '{key}', which is not an earlier request (unknown, later, or a cycle)",
                )
            waits.append(j)
        index = len(self._ids)
        self._index_of[rid] = index
        self._ids.append(rid)
        self._ts.append(float(timestamp_s))
        self._inp.append(int(input_tokens))
        self._out.append(int(output_tokens))
        if session_id is None:
            self._sess.append(-1)
        else:
            key = str(session_id)
            s = self._sess_index.get(key)
            if s is None:
                s = self._sess_index[key] = len(self._sess_names)
                self._sess_names.append(key)
            self._sess.append(s)
        self._tool.append(float(tool_wait_s))
        self._waits.append(waits)
        if self.tree is None:
            self._hashes.append(hash_ids if hash_ids is not None else ())
        else:
            self._segments.append(prefix_segment)
        self._lines.append(line)
        return index

    def build(self) -> Trace:
        """Freeze the accumulated requests into a columnar :class:`Trace`."""
        if not self._ids:
            raise TraceError(self.source, None, None, "the trace has no requests")
        columns: dict[str, Any] = {
            "source": self.source,
            "request_ids": self._ids,
            "timestamp_s": np.asarray(self._ts, dtype=np.float64),
            "input_tokens": np.asarray(self._inp, dtype=np.int64),
            "output_tokens": np.asarray(self._out, dtype=np.int64),
            "session_index": np.asarray(self._sess, dtype=np.int64),
            "session_names": self._sess_names,
            "tool_wait_s": np.asarray(self._tool, dtype=np.float64),
            "wait_offsets": _offsets(self._waits),
            "wait_indices": _concat(self._waits),
            "hash_block_tokens": self.hash_block_tokens,
            "line_numbers": np.asarray(self._lines, dtype=np.int64),
        }
        if self.tree is not None:
            return Trace.from_prefix_tree(self.tree.build(self._segments), **columns)
        return Trace(_hash_offsets=_offsets(self._hashes), _hash_values=_concat(self._hashes), **columns)


def load_jsonl(path: str | Path, hash_block_tokens: int | None = None) -> Trace:
    """Load a native (Mooncake-shaped) JSONL trace, validating every line.

    ``hash_block_tokens`` overrides the header's (or the Mooncake default of 512).
    """
    path = Path(path)
    source = str(path)
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise TraceError(source, None, None, f"cannot open: {exc.strerror}") from exc
    builder: TraceBuilder | None = None
    validate = TraceLine.model_validate
    loads = json.loads
    with handle:
        for lineno, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                obj = loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise TraceError(source, lineno, None, f"not valid JSON ({exc})") from None
            if not isinstance(obj, dict):
                raise TraceError(source, lineno, None, "a request line must be a JSON object")
            if builder is None:
                block = hash_block_tokens
                if "format" in obj:
                    try:
                        header = TraceHeader.model_validate(obj)
                    except ValidationError as exc:
                        name, msg = _first_error(exc)
                        raise TraceError(source, lineno, name, msg) from None
                    builder = TraceBuilder(source, block or header.hash_block_tokens)
                    continue
                builder = TraceBuilder(source, block or DEFAULT_HASH_BLOCK_TOKENS)
            try:
                req = validate(obj)
            except ValidationError as exc:
                name, msg = _first_error(exc)
                raise TraceError(source, lineno, name, msg) from None
            builder.add(
                line=lineno,
                timestamp_s=req.timestamp / 1000.0,
                input_tokens=req.input_length,
                output_tokens=req.output_length,
                request_id=None if req.request_id is None else str(req.request_id),
                session_id=None if req.session_id is None else str(req.session_id),
                wait_for=[str(w) for w in req.wait_for] if req.wait_for else (),
                tool_wait_s=req.tool_wait_ms / 1000.0,
                hash_ids=req.hash_ids,
            )
    if builder is None:
        raise TraceError(source, None, None, "the trace has no requests")
    return builder.build()


def write_jsonl(trace: Trace, path: str | Path, header: dict[str, Any] | None = None) -> None:
    """Write a trace in the native format (atomically), optionally with a header line."""
    from simdisagg.output import atomic_write_text

    rows: list[str] = []
    head = {"format": "simdisagg-trace", "version": 1, "hash_block_tokens": trace.hash_block_tokens}
    if header:
        head.update(header)
    rows.append(json.dumps(head))
    for i in range(len(trace)):
        row: dict[str, Any] = {
            "request_id": trace.request_ids[i],
            "timestamp": _ms(trace.timestamp_s[i]),
            "input_length": int(trace.input_tokens[i]),
            "output_length": int(trace.output_tokens[i]),
        }
        if trace.session_index[i] >= 0:
            row["session_id"] = trace.session_names[int(trace.session_index[i])]
        waits = trace.waits_of(i)
        if len(waits):
            row["wait_for"] = [trace.request_ids[int(j)] for j in waits]
            row["tool_wait_ms"] = _ms(trace.tool_wait_s[i])
        hashes = trace.hashes_of(i)
        if len(hashes):
            row["hash_ids"] = hashes.tolist()
        rows.append(json.dumps(row))
    atomic_write_text(Path(path), "\n".join(rows) + "\n")


def _ms(seconds: float) -> float | int:
    ms = round(float(seconds) * 1000.0, 6)
    return int(round(ms)) if math.isclose(ms, round(ms)) else ms
