"""What every login item shares: who it is for (``Target``), what the OS says about it
(``State``), and the ``LoginItem`` base class the per-OS classes fill in.

A login item belongs to one user and one profile. The default profile's item has a plain
name (``dbtkd.service``, ``com.dbtoolkit.dbtkd``, ``DBToolkit-dbtkd``); a profile chosen with
``--home H`` gets the first 12 hex digits of the SHA-256 of its real path appended, so a
second profile never overwrites the default login item. Templates live in ``service/`` at the
top of the source tree (``sys._MEIPASS/service`` in a frozen build) and are rendered with the
absolute path of the ``dbtkd`` executable that sits next to this interpreter or executable.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dbtkctl.service.activation import profile_suffix
from dbtkctl.service.plan import ServiceError, Step

# ``${name}`` only, so a literal ``$VAR`` or ``%t`` in a template's comments stays as it is.
PLACEHOLDER = re.compile(r"\$\{([a-z_]+)\}")
SERVICE_DIR_NAME = "service"


@dataclass(frozen=True)
class Target:
    """The user and profile a login item is for, and the executable it starts.

    Everything the per-OS code needs comes from here rather than from ``os.environ`` or
    ``sys``, so tests build one for any OS with temporary directories.
    """

    home: str | None  # DBTK_HOME for the daemon; None means the per-OS defaults
    user_home: str  # the user's home directory (~)
    executable: str  # absolute path of dbtkd (dbtkd.exe on Windows)
    env: Mapping[str, str] = field(default_factory=dict)
    uid: int = 0

    @property
    def suffix(self) -> str:
        """``""`` for the default profile, ``"-<12 hex>"`` for a ``--home`` profile."""
        return profile_suffix(self.home)

    @property
    def profile_note(self) -> str:
        return "" if self.home is None else f", profile {self.home}"

    def daemon_args(self, *, with_home: bool) -> list[str]:
        """dbtkd's arguments: no idle exit (``0`` also overrides an ``idle_exit`` setting)."""
        args = [self.executable]
        if with_home and self.home is not None:
            args += ["--home", self.home]
        return [*args, "--idle-exit", "0"]


@dataclass(frozen=True)
class State:
    """What the OS says about a login item, asked through the ``oscmd`` seam."""

    installed: bool  # our files or registrations exist
    loaded: bool | None = None  # the OS manager has it (None: could not ask)
    active: bool | None = None  # it runs now (None: unknown)
    pid: int | None = None  # the process the manager started, when it says
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # why the manager could not be asked


class LoginItem:
    """One OS's login item for one ``Target``; subclasses fill in what raises here."""

    kind = "abstract"
    # Whether install stops a daemon started on demand so that the login item's own starts
    # (systemd's socket unit would take its socket path; launchd would retry every 10 s).
    takes_over_running_daemon = False

    def __init__(self, target: Target) -> None:
        self.target = target

    @property
    def name(self) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        """One sentence for the user: what was installed and what it does."""
        raise NotImplementedError

    def files(self) -> dict[str, bytes]:
        """Every file the item installs, rendered, by absolute path."""
        raise NotImplementedError

    def query(self) -> State:
        raise NotImplementedError

    def install_steps(self, state: State, changed: set[str], daemon_pid: int | None) -> list[Step]:
        """Commands that register and start the item (files are written before them)."""
        raise NotImplementedError

    def uninstall_steps(self, state: State) -> list[Step]:
        """Commands and removals that leave no trace of the item."""
        raise NotImplementedError

    def file_encoding(self, path: str) -> str:
        return "utf-8"

    def socket_note(self) -> str | None:
        """The unit that restarts the daemon on use, if this OS has one (systemd)."""
        return None


def template_dirs() -> list[str]:
    """Where the ``service/`` templates may be, most specific first."""
    dirs = []
    if getattr(sys, "frozen", False):
        dirs.append(
            os.path.join(
                getattr(sys, "_MEIPASS", os.path.dirname(sys.executable)), SERVICE_DIR_NAME
            )
        )
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    dirs.append(os.path.join(package_root, SERVICE_DIR_NAME))  # source tree, editable install
    dirs.append(os.path.join(sys.prefix, "share", "db-toolkit", SERVICE_DIR_NAME))
    return dirs


def read_template(relative: str) -> str:
    for base in template_dirs():
        path = os.path.join(base, relative)
        try:
            with open(path, encoding="utf-8") as file:
                return file.read()
        except FileNotFoundError:
            continue
    raise ServiceError(
        f"login-item template {relative} not found in "
        f"{', '.join(template_dirs())}; this installation lacks service/"
    )


def render(template: str, values: Mapping[str, str]) -> str:
    """Fill ``${name}`` fields with values the caller has escaped for the file's syntax.

    A line holding nothing but a field whose value is empty is dropped. Every field must have a
    value and every value a field: a typo in either would otherwise ship a unit with a literal
    ``${...}`` in it.
    """
    used: set[str] = set()

    def field_value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"template field ${{{name}}} has no value")
        used.add(name)
        return values[name]

    lines = []
    for line in template.splitlines(keepends=True):
        only = PLACEHOLDER.fullmatch(line.strip())
        if only and values.get(only.group(1)) == "":
            used.add(only.group(1))
            continue
        lines.append(PLACEHOLDER.sub(field_value, line))
    unused = set(values) - used
    if unused:
        raise KeyError(f"values without a template field: {sorted(unused)}")
    return "".join(lines)


def daemon_executable(platform: str = sys.platform) -> str:
    """The absolute path of ``dbtkd``: beside ``dbtkctl`` (frozen) or this interpreter.

    Not resolved through symlinks: a virtual environment's python links to the system one, and
    the console script lives next to the link. A ``pip install --user`` puts scripts in the
    user scheme's directory instead, which is the fallback.
    """
    name = "dbtkd.exe" if platform == "win32" else "dbtkd"
    candidates = [os.path.join(os.path.dirname(os.path.abspath(sys.executable)), name)]
    if not getattr(sys, "frozen", False):
        import sysconfig

        candidates += [
            os.path.join(sysconfig.get_path("scripts"), name),
            os.path.join(sysconfig.get_path("scripts", f"{os.name}_user"), name),
        ]
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise ServiceError(
        f"cannot find the dbtkd executable (looked at {', '.join(candidates)}); "
        "reinstall DB Toolkit's backend"
    )


def reject_control_characters(value: str, what: str) -> str:
    """Paths go into files whose syntax ends at a newline: refuse any control character."""
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ServiceError(f"{what} {value!r} contains a control character; use a path without one")
    return value
