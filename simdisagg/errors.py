"""Errors users can act on, and the one place that turns them into a one-line CLI message.

Every error names where the problem is: ``file:line: field 'x': what is wrong`` (or the flag,
``--slo-ttft: ...``). The CLI prints that line and exits with status 1; a traceback is shown
only with ``SIMDISAGG_DEBUG=1``. :func:`describe` is the mapping from any exception to that line
and exit status, so every command reports the same way.
"""

from __future__ import annotations

import errno


def where(path: object, line: int | None = None, field: str | None = None) -> str:
    """``path:line: field 'x':`` -- the location prefix of every message about a file."""
    text = f"{path}" + (f":{line}" if line is not None else "") + ":"
    return text + (f" field '{field}':" if field else "")


class SimdisaggError(Exception):
    """Base class of every error a user can fix by changing an input."""


class TraceError(SimdisaggError):
    """A trace file is malformed: the message names file, line and field."""

    def __init__(self, path: object, line: int | None, field: str | None, message: str) -> None:
        self.path, self.line, self.field, self.message = path, line, field, message
        super().__init__(f"{where(path, line, field)} {message}")


class ConfigError(SimdisaggError):
    """A cluster config, a profile, a CLI value or an output path is invalid or unknown."""


class InputError(ConfigError):
    """A file cannot be read as what it should be (encoding, syntax, duplicate keys, nesting):
    the message names file, line and column."""


class CalibrationError(SimdisaggError):
    """Calibration or fitting cannot proceed (no GPU, no samples, bad raw file)."""


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal: Ctrl-C (SIGINT) or SIGTERM, handled the same way."""

    def __init__(self, signal_name: str = "SIGINT") -> None:
        self.signal_name = signal_name
        super().__init__(signal_name)


#: Exit status of a run stopped by each signal (128 + the signal number, as shells report it).
SIGNAL_EXIT_STATUS = {"SIGINT": 130, "SIGTERM": 143}


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def describe(exc: BaseException) -> tuple[str, int]:
    """The one-line message and exit status the command line gives for ``exc``.

    Errors a user can fix (:class:`SimdisaggError`) and system errors (a file that cannot be
    written, a full disk) exit with 1; a signal with 128 + its number; anything else is a bug,
    said in one line that asks for ``SIMDISAGG_DEBUG=1`` (exit 70, ``EX_SOFTWARE``)."""
    if isinstance(exc, Interrupted):
        name = exc.signal_name
        return ("interrupted" if name == "SIGINT" else f"terminated ({name})"), SIGNAL_EXIT_STATUS.get(name, 130)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", 130
    if isinstance(exc, SimdisaggError):
        return f"error: {_one_line(str(exc))}", 1
    if isinstance(exc, OSError):
        name = exc.filename if exc.filename is not None else ""
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, "") or str(exc)
        target = f"{name}: " if name != "" else ""
        return f"error: {target}{_one_line(reason)}", 1
    if isinstance(exc, MemoryError):
        return "error: out of memory (try a smaller trace or fewer workers)", 1
    if isinstance(exc, RecursionError):
        return "error: an input is nested too deeply to read", 1
    detail = _one_line(str(exc))[:300]
    return (
        f"error: internal error ({type(exc).__name__}: {detail}); SIMDISAGG_DEBUG=1 shows the traceback",
        70,
    )
