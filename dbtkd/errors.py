"""Every error the daemon and the CLI report, classed by whose fault it is.

Each class carries the ``dbtkctl`` exit code it maps to (DESIGN §6), so entry points turn
exceptions into exit codes in exactly one place. Messages say what to do next. Stdlib only:
``dbtkctl`` imports it.
"""

from __future__ import annotations


class DbtkError(Exception):
    """Something went wrong that the user should read about (exit 1)."""

    exit_code = 1


class UsageError(DbtkError):
    """The caller's fault: a bad flag, environment variable or config value (exit 2)."""

    exit_code = 2


class ConfigError(UsageError):
    """A bad value in ``dbtkd.toml``, a ``DBTK_*`` variable or a flag."""


class NotRunning(DbtkError):
    """No daemon answers and the command was not allowed to start one (exit 3)."""

    exit_code = 3


class StartFailed(DbtkError):
    """The daemon could not start, or it is in state ``failed`` (exit 4)."""

    exit_code = 4


class PortRangeExhausted(StartFailed):
    def __init__(self, first: int, last: int) -> None:
        super().__init__(
            f"port range {first}-{last} is all in use; pass --port-range A-B (or 0 for any "
            "free port), or set DBTK_PORT_RANGE or port_range in dbtkd.toml"
        )


class AlreadyRunning(DbtkError):
    """Another daemon holds this profile's instance lock."""


class DaemonError(DbtkError):
    """The daemon answered a control request with an error reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code


class ProtocolMismatch(DbtkError):
    """The daemon speaks a control protocol this client does not."""


# What to do about a file or directory the system refused, by errno (an environment problem,
# not a bug: it gets one line, never a traceback).
_ENVIRONMENT_HINTS = {
    "EROFS": "the file system is read-only; use a home on a writable disk (--home or DBTK_HOME)",
    "ENOSPC": "the disk is full; free some space and try again",
    "EDQUOT": "the disk quota is used up; free some space and try again",
    "EACCES": "permission denied; it must belong to you and be writable by you",
    "EPERM": "not permitted; it must belong to you and be writable by you",
    "ENOTDIR": "a file stands where a directory should be; move the file away",
    "EEXIST": "something else already has that name; move it away",
    "EISDIR": "a directory stands where a file should be; move the directory away",
    "ENOENT": "a directory on the way is missing; create it or choose another home",
    "ELOOP": "a symbolic link stands where a file should be; remove the link",
}


def environment_problem(exc: OSError) -> str:
    """``exc`` as one line: what could not be used, why, and what to do."""
    import errno

    where = exc.filename if exc.filename is not None else "a file"
    name = errno.errorcode.get(exc.errno or 0, "")
    hint = _ENVIRONMENT_HINTS.get(name)
    reason = exc.strerror or str(exc)
    return f"cannot use {where}: {reason}" + (f"; {hint}" if hint else "")
