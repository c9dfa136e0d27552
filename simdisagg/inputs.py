"""Reading what users give the tool, so that bad input is refused in one line before any work.

Every file simdisagg reads as text goes through :func:`read_text`: UTF-8, with a UTF-8
byte-order mark dropped; UTF-16 and UTF-32 files (told by their byte-order mark), compressed
and binary files are named as such, and a byte that is not UTF-8 is located by line and column.
Settings files (YAML or JSON: configs, profiles, grids, ``meta.yaml``) are read by
:func:`load_settings`, which refuses duplicate keys, nesting deeper than :data:`MAX_NESTING`,
numbers too long to read and non-finite JSON constants, and keeps the line of every key so
that a later validation error can name it. :func:`csv_rows` and the ``parse_*`` helpers give
CSV rows with their line numbers and typed cells that name ``file:line: field 'column'``.
:func:`check_output_dir` and :func:`check_output_file` look at an output path before a run
starts, so that a folder that is a file, sits under a file or cannot be written is refused
before any simulation, not after.

Every error is a :class:`~simdisagg.errors.SimdisaggError` whose message names the place.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import os
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from simdisagg.errors import ConfigError, InputError, TraceError

#: Deepest nesting of mappings and lists a settings file may have (real ones stop at about 4).
MAX_NESTING = 32
#: Largest signed 64-bit integer: ids and counts are stored as int64.
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

_UTF16_32_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)
_MAGIC = ((b"\x1f\x8b", "gzip-compressed"), (b"PK\x03\x04", "a zip archive"), (b"PAR1", "a Parquet file"),
          (b"(\xb5/\xfd", "zstd-compressed"), (b"BZh", "bzip2-compressed"), (b"\xfd7zXZ", "xz-compressed"))  # fmt: skip


def _line_and_column(data: bytes, offset: int) -> tuple[int, int]:
    line = data.count(b"\n", 0, offset) + 1
    column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
    return line, column


def strip_utf8_bom(data: bytes, source: object) -> bytes:
    """``data`` without a UTF-8 byte-order mark; a UTF-16/32 mark or a compressed file is an error."""
    if data.startswith(codecs.BOM_UTF8):
        return data[len(codecs.BOM_UTF8) :]
    for bom, name in _UTF16_32_BOMS:
        if data.startswith(bom):
            raise InputError(f"{source}: the file is {name} (byte-order mark); save it as UTF-8")
    for magic, name in _MAGIC:
        if data.startswith(magic):
            raise InputError(f"{source}: the file is {name}, not text; decompress or convert it first")
    return data


def decode_utf8(data: bytes, source: object) -> str:
    """Decode ``data`` as UTF-8 text (a UTF-8 byte-order mark is dropped), naming the line and
    column of the first byte that is not UTF-8."""
    data = strip_utf8_bom(data, source)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _line_and_column(data, exc.start)
        raise InputError(
            f"{source}:{line}: byte 0x{data[exc.start]:02x} at column {column} is not UTF-8 text; "
            "save the file as UTF-8"
        ) from None


def read_bytes(path: str | Path, what: str = "file") -> bytes:
    """The bytes of a file (a pipe or FIFO is read once); a folder or an unreadable path is an error."""
    p = Path(path)
    try:
        info = p.stat()
    except OSError as exc:
        raise InputError(f"{p}: cannot read {what} ({exc.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{p}: is a folder, not a {what}")
    try:
        with p.open("rb") as handle:
            return handle.read()
    except OSError as exc:
        raise InputError(f"{p}: cannot read {what} ({exc.strerror})") from None


def read_text(path: str | Path, what: str = "file") -> str:
    """A text file read as UTF-8 (see :func:`decode_utf8`)."""
    return decode_utf8(read_bytes(path, what), path)


def is_regular_file(path: str | Path) -> bool:
    """Whether ``path`` is an ordinary file (not a folder, pipe, FIFO or device)."""
    try:
        return stat.S_ISREG(Path(path).stat().st_mode)
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# Settings files: YAML and JSON


class Settings(dict):  # type: ignore[type-arg]
    """A settings mapping that remembers the line of each key (``lines[("prefill", "count")]``)."""

    source: str
    lines: dict[tuple[str, ...], int]

    def line_of(self, path: Sequence[object]) -> int | None:
        """The line of the deepest key of ``path`` that the file has (``None`` if it has none)."""
        keys = tuple(str(p) for p in path)
        while keys:
            if keys in self.lines:
                return self.lines[keys]
            keys = keys[:-1]
        return None


def _walk_yaml(root: yaml.Node, source: str) -> dict[tuple[str, ...], int]:
    """Lines of every mapping key under ``root``; duplicate keys and deep nesting are errors.

    Iterative, so that no nesting can exhaust the interpreter's stack here, and each node is
    visited once: aliases of aliases (a "billion laughs" file) cost no more than their nodes."""
    lines: dict[tuple[str, ...], int] = {}
    stack: list[tuple[yaml.Node, tuple[str, ...], int]] = [(root, (), 0)]
    visited: set[int] = set()
    while stack:
        node, path, depth = stack.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        if depth > MAX_NESTING:
            raise InputError(f"{source}:{node.start_mark.line + 1}: nested more than {MAX_NESTING} levels deep")
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
                line = key_node.start_mark.line + 1
                if key == "<<":  # a YAML merge key, resolved by the constructor
                    stack.append((value_node, path, depth + 1))
                    continue
                if key in seen:
                    raise InputError(
                        f"{source}:{line}: key '{'.'.join(path + (key,))}' appears twice (also line {seen[key]})"
                    )
                seen[key] = line
                lines[path + (key,)] = line
                stack.append((value_node, path + (key,), depth + 1))
        elif isinstance(node, yaml.SequenceNode):
            for k, item in enumerate(node.value):
                lines.setdefault(path + (str(k),), item.start_mark.line + 1)
                stack.append((item, path + (str(k),), depth + 1))
    return lines


def _yaml_error(exc: yaml.YAMLError, source: str) -> InputError:
    mark = getattr(exc, "problem_mark", None)
    line = f":{mark.line + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or "not valid YAML"
    return InputError(f"{source}{line}: not valid YAML ({problem})")


def parse_yaml(text: str, source: str) -> Settings:
    """YAML text → :class:`Settings`; a document that is not a mapping, duplicate keys, deep
    nesting and overlong numbers are errors with a line. An empty document is no settings."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, source) from None
    except RecursionError:
        raise InputError(f"{source}: nested more than {MAX_NESTING} levels deep") from None
    if root is None:
        result = Settings()
        result.source, result.lines = source, {}
        return result
    lines = _walk_yaml(root, source)
    loader = yaml.SafeLoader("")
    try:
        data = loader.construct_document(root)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, source) from None
    except ValueError as exc:  # an integer too long to convert
        raise InputError(f"{source}: a number is too long to read ({str(exc).split(':')[0]})") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a mapping of settings, got a {type(data).__name__}")
    result = Settings(data)
    result.source, result.lines = source, lines
    return result


class DuplicateKey(ValueError):
    """A JSON object has a key twice (raised by :func:`no_duplicate_keys`)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for :func:`json.loads` that refuses a key given twice (json keeps
    the last one silently)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(key)
        out[key] = value
    return out


def refuse_constant(name: str) -> Any:
    """``parse_constant`` for :func:`json.loads`: NaN and the infinities are not JSON numbers."""
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(text: str, source: str) -> Settings:
    """JSON text → :class:`Settings`, refusing duplicate keys, NaN/Infinity, deep nesting and
    overlong numbers; key lines come from reading the same text as YAML where that works."""
    try:
        data = json.loads(text, object_pairs_hook=no_duplicate_keys, parse_constant=refuse_constant)
    except json.JSONDecodeError as exc:
        raise InputError(f"{source}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from None
    except DuplicateKey as exc:
        try:  # flow JSON reads as YAML, whose nodes carry lines: name the second occurrence
            root = yaml.compose(text, Loader=yaml.SafeLoader)
            if root is not None:
                _walk_yaml(root, source)
        except (yaml.YAMLError, RecursionError):
            pass
        raise InputError(f"{source}: key '{exc.key}' appears twice in one object") from None
    except RecursionError:
        raise InputError(f"{source}: nested more than {MAX_NESTING} levels deep") from None
    except ValueError as exc:
        raise InputError(f"{source}: {str(exc).split(':')[0]}") from None
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a JSON object of settings, got a {type(data).__name__}")
    depth = _depth(data)
    if depth > MAX_NESTING:
        raise InputError(f"{source}: nested more than {MAX_NESTING} levels deep")
    result = Settings(data)
    result.source, result.lines = source, _lines_if_yaml(text, source)
    return result


def _lines_if_yaml(text: str, source: str) -> dict[tuple[str, ...], int]:
    """Key lines of JSON text read as YAML (flow JSON is YAML); empty when it does not read so."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        return {} if root is None else _walk_yaml(root, source)
    except (yaml.YAMLError, RecursionError, InputError):
        return {}


def _depth(obj: Any) -> int:
    deepest = 0
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in node)
    return deepest


def load_settings(path: str | Path, what: str = "settings file") -> Settings:
    """Read a YAML or JSON settings file (JSON when the name ends in ``.json``)."""
    source = str(path)
    text = read_text(path, what)
    if source.endswith(".json"):
        return parse_json(text, source)
    return parse_yaml(text, source)


# --------------------------------------------------------------------------------------------
# Numbers and CSV cells


def _short(value: Any) -> str:
    if isinstance(value, int):
        text = str(value) if abs(value) < 10**30 else "a number beyond 64 bits"
    else:
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_int(
    text: str, source: object, line: int, name: str, minimum: int, maximum: int = INT64_MAX
) -> int:
    """A CSV cell as a whole number in ``[minimum, maximum]`` (``12.0`` is 12; ``12.5`` is refused)."""
    raw = text.strip()
    if len(raw) > 40:
        raise TraceError(source, line, name, f"'{raw[:20]}...' ({len(raw)} characters) is not a sane number")
    try:
        value = int(raw)
    except ValueError:
        try:
            as_float = float(raw)
        except ValueError:
            raise TraceError(source, line, name, f"'{raw}' is not an integer") from None
        if not math.isfinite(as_float) or not as_float.is_integer():
            raise TraceError(source, line, name, f"'{raw}' is not a whole number") from None
        value = int(as_float)
    if not minimum <= value <= maximum:
        raise TraceError(source, line, name, f"must be between {minimum:,} and {maximum:,}, got {_short(value)}")
    return value


def parse_float(text: str, source: object, line: int, name: str, maximum: float = math.inf) -> float:
    """A CSV cell as a finite number no larger than ``maximum``."""
    raw = text.strip()
    try:
        value = float(raw)
    except ValueError:
        raise TraceError(source, line, name, f"'{raw[:40]}' is not a number") from None
    if not math.isfinite(value):
        raise TraceError(source, line, name, f"'{raw}' is not a finite number")
    if abs(value) > maximum:
        raise TraceError(source, line, name, f"{raw} is out of range (at most {maximum:g})")
    return value


def csv_rows(path: str | Path) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, fields)`` for every non-blank CSV line, the header included.

    The file is read as UTF-8 (:func:`read_text`); a line the CSV reader cannot split (an
    unclosed quote, a field over the reader's size limit) is named with its line."""
    source = str(path)
    text = read_text(path, "CSV file")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        for row in reader:
            if row and any(cell.strip() for cell in row):
                yield reader.line_num, row
    except csv.Error as exc:
        raise TraceError(source, reader.line_num, None, f"not valid CSV ({exc})") from None


def header_index(header: list[str], required: Sequence[str], source: str) -> dict[str, int]:
    """Column positions by name; a missing required column or a repeated name is an error."""
    names = [h.strip() for h in header]
    missing = [c for c in required if c not in names]
    if missing:
        raise TraceError(source, 1, missing[0], f"column is missing from the header {names}")
    index: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in index and name:
            raise TraceError(
                source, 1, name, f"column appears twice in the header (columns {index[name] + 1} and {i + 1})"
            )
        index[name] = i
    return index


def cell(row: list[str], index: dict[str, int], name: str, source: str, line: int) -> str:
    """The stripped text of column ``name`` (``""`` when the file has no such column)."""
    i = index.get(name)
    if i is None:
        return ""
    if i >= len(row):
        raise TraceError(source, line, name, f"is missing (the row has {len(row)} fields)")
    value = row[i].strip()
    if not value:
        raise TraceError(source, line, name, "is empty")
    return value


# --------------------------------------------------------------------------------------------
# Output paths


def _nearest_existing(path: Path) -> Path:
    probe = path
    while not probe.exists() and not probe.is_symlink():
        parent = probe.parent
        if parent == probe:
            break
        probe = parent
    return probe


def _probe_writable(folder: Path, flag: str, target: Path) -> None:
    try:
        fd, name = tempfile.mkstemp(prefix=".simdisagg-probe-", dir=folder)
    except OSError as exc:
        raise ConfigError(f"{flag} {target}: cannot write in {folder} ({exc.strerror})") from None
    os.close(fd)
    os.unlink(name)


def check_output_dir(path: str | Path, flag: str) -> Path:
    """Check, before any work, that ``path`` is or can become a writable folder."""
    p = Path(path)
    if p.exists() or p.is_symlink():
        if not p.is_dir():
            raise ConfigError(f"{flag} {p}: exists and is not a folder")
        _probe_writable(p, flag, p)
        return p
    existing = _nearest_existing(p.absolute())
    if not existing.is_dir():
        raise ConfigError(f"{flag} {p}: {existing} is a file, so no folder can be made under it")
    _probe_writable(existing, flag, p)
    return p


def check_output_file(path: str | Path, flag: str, inputs: Sequence[str | Path] = ()) -> Path:
    """Check, before any work, that ``path`` can be written as a regular file (atomically, so
    its folder must be writable) and is none of ``inputs``."""
    p = Path(path)
    if p.exists():
        if p.is_dir():
            raise ConfigError(f"{flag} {p}: is a folder; give a file name")
        if not is_regular_file(p):
            raise ConfigError(f"{flag} {p}: is a device or pipe, not a regular file")
        for other in inputs:
            try:
                if Path(other).exists() and os.path.samefile(p, other):
                    raise ConfigError(f"{flag} {p}: is also the input; write to another file")
            except OSError:
                continue
    if str(p).endswith(os.sep):
        raise ConfigError(f"{flag} {p}: names a folder; give a file name")
    existing = _nearest_existing(p.absolute().parent)
    if not existing.is_dir():
        raise ConfigError(f"{flag} {p}: {existing} is a file, so nothing can be written under it")
    _probe_writable(existing, flag, p)
    return p
