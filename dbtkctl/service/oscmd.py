"""The one door through which login-item code runs an OS command.

``systemctl --user``, ``launchctl``, ``schtasks`` and ``reg`` are all run by ``run``, so the
tests patch this single function, see every command exactly as it would be run, and exercise
the macOS and Windows code paths on Linux. Nothing here interprets a command's output; the
per-OS modules do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dbtkd.units import SECONDS

# systemctl waits for the unit to start (``enable --now``): the daemon's ready timeout (30 s)
# plus systemd's own bookkeeping. A command that takes longer is stuck, not slow.
COMMAND_TIMEOUT = 60 * SECONDS
NOT_FOUND = 127  # what a shell reports for a missing command


@dataclass(frozen=True)
class Completed:
    """What a command did: its exit status and its output, decoded leniently."""

    returncode: int
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def message(self) -> str:
        """The most useful line of output, for an error message."""
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return text[-1] if text else f"exit status {self.returncode}"


def run(argv: Sequence[str]) -> Completed:
    """Run ``argv`` (no shell), wait for it and return what it did; never raises for failure."""
    import subprocess

    try:
        proc = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",  # schtasks and reg print in the console's code page
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        return Completed(NOT_FOUND, "", f"{argv[0]}: command not found")
    except subprocess.TimeoutExpired:
        return Completed(1, "", f"{argv[0]}: no answer within {COMMAND_TIMEOUT:.0f} s")
    return Completed(proc.returncode, proc.stdout, proc.stderr)
