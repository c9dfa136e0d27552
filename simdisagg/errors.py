"""Errors users can act on, and the one place that turns them into a one-line CLI message.

Every error names where the problem is: ``file:line: field 'x': what is wrong``. The CLI prints
that line and exits with status 1; a traceback is shown only with ``SIMDISAGG_DEBUG=1``.
"""

from __future__ import annotations


class SimdisaggError(Exception):
    """Base class of every error a user can fix by changing an input."""


class TraceError(SimdisaggError):
    """A trace file is malformed: the message names file, line and field."""

    def __init__(self, path: object, line: int | None, field: str | None, message: str) -> None:
        self.path, self.line, self.field = path, line, field
        where = f"{path}" + (f":{line}" if line is not None else "")
        what = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{what} {message}")


class ConfigError(SimdisaggError):
    """A cluster config, a profile or a CLI value is invalid or unknown."""


class CalibrationError(SimdisaggError):
    """Calibration or fitting cannot proceed (no GPU, no samples, bad raw file)."""
