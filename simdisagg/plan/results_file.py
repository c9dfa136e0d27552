"""The results file: finished evaluations, one JSON line each, so an interrupted sweep resumes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

#: Version of the results-file records; bump when a record's meaning changes.
RESULT_SCHEMA = 2


def job_key(trace_fp: str, candidate: dict[str, Any], base: dict[str, Any], search: dict[str, Any]) -> str:
    """The identity of one evaluation: candidate, base config (SLO included), search, trace."""
    blob = json.dumps(
        {"v": RESULT_SCHEMA, "trace": trace_fp, "candidate": candidate, "base": base, "search": search},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class ResultsFile:
    """Append-only JSON-lines file of finished evaluations, keyed by :func:`job_key`.

    Each record is written as one line, flushed and fsynced before the next starts, so a crash
    can only tear the last line; a torn or unreadable last line is cut off (with a warning) and
    its evaluation runs again. ``path=None`` keeps results in memory only."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        self.warnings: list[str] = []
        if path is not None and path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        data = path.read_bytes()
        good_end = 0
        pos = 0
        lines = data.split(b"\n")
        for k, raw in enumerate(lines):
            last = k == len(lines) - 1
            end = pos + len(raw) + (0 if last else 1)
            if raw.strip():
                try:
                    rec = json.loads(raw)
                    key = rec["key"]
                    if last:
                        raise ValueError("no newline after the last record")
                except (ValueError, KeyError, TypeError):
                    where = "last line" if last or not any(x.strip() for x in lines[k + 1 :]) else f"line {k + 1}"
                    self.warnings.append(f"{path}: {where} is torn or unreadable; ignored, its candidate runs again")
                    pos = end
                    continue
                self.records[key] = rec
                good_end = end
            pos = end
        if good_end < len(data):
            # Cut the torn tail so the next append starts on a clean line.
            with path.open("r+b") as handle:
                handle.truncate(good_end)
                handle.flush()
                os.fsync(handle.fileno())

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored result of an evaluation, or ``None``."""
        rec = self.records.get(key)
        return None if rec is None else rec["result"]

    def append(self, key: str, kind: str, result: dict[str, Any]) -> None:
        """Store one finished evaluation durably."""
        rec = {"key": key, "kind": kind, "schema": RESULT_SCHEMA, "result": result}
        self.records[key] = rec
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(rec) + "\n"
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
