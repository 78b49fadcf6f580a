"""The Linux login item: a systemd user service plus a socket unit that holds the control socket.

Both units go to ``$XDG_CONFIG_HOME/systemd/user`` (default ``~/.config/systemd/user``). The
socket unit listens on the control socket path that ``dbtkd.paths`` computes for the profile
(``%t/db-toolkit/dbtkd.sock`` for the default one, ``%t`` being ``$XDG_RUNTIME_DIR``), so a
client that connects while the daemon is stopped starts it; the service is also wanted by
``default.target``, so it starts at login. ``systemctl --user`` does the rest, through the
``oscmd`` seam. Values are escaped for unit-file syntax: ``%`` is a specifier everywhere,
``$`` is expanded in ``ExecStart=``, and quoted words take C escapes.
"""

from __future__ import annotations

import os

from dbtkctl.service import oscmd
from dbtkctl.service.activation import UNIT_BASENAME, unit_dir
from dbtkctl.service.loginitem import (
    LoginItem,
    State,
    read_template,
    reject_control_characters,
    render,
)
from dbtkctl.service.plan import RemoveFile, RunCommand, ServiceError, Step
from dbtkd import paths

# The default profile's socket, written with the specifier systemd expands to the runtime dir,
# so the unit stays right if that directory moves.
DEFAULT_LISTEN_STREAM = "%t/db-toolkit/dbtkd.sock"
SYSTEMCTL = ("systemctl", "--user")
# systemd rejects these in an executable's name ("contains special characters").
EXECUTABLE_REFUSED = ("'", '"', "\\")
SHOWN_PROPERTIES = "Id,LoadState,UnitFileState,ActiveState,SubState,MainPID"
SERVICE_WANTED_BY = "default.target.wants"
SOCKET_WANTED_BY = "sockets.target.wants"


def escape_specifiers(value: str) -> str:
    return value.replace("%", "%%")


def quote_word(value: str, *, expand_dollar: bool) -> str:
    """One double-quoted word: C escapes for ``\\`` and ``"``, ``%%``; ``$$`` where expanded."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escape_specifiers(escaped)
    if expand_dollar:
        escaped = escaped.replace("$", "$$")
    return f'"{escaped}"'


class SystemdUnits(LoginItem):
    """``dbtkd[-<id>].service`` + ``dbtkd[-<id>].socket`` in the user's systemd instance."""

    kind = "systemd"
    takes_over_running_daemon = True  # the socket unit would otherwise re-bind its socket path

    @property
    def name(self) -> str:
        return self.service_name

    @property
    def service_name(self) -> str:
        return f"{UNIT_BASENAME}{self.target.suffix}.service"

    @property
    def socket_name(self) -> str:
        return f"{UNIT_BASENAME}{self.target.suffix}.socket"

    @property
    def unit_dir(self) -> str:
        return unit_dir(self.target.env, self.target.user_home)

    @property
    def service_path(self) -> str:
        return os.path.join(self.unit_dir, self.service_name)

    @property
    def socket_path(self) -> str:
        return os.path.join(self.unit_dir, self.socket_name)

    @property
    def wants_links(self) -> list[str]:
        """What ``systemctl enable`` creates; removed by hand too if the manager is away."""
        return [
            os.path.join(self.unit_dir, SERVICE_WANTED_BY, self.service_name),
            os.path.join(self.unit_dir, SOCKET_WANTED_BY, self.socket_name),
        ]

    def describe(self) -> str:
        return (
            f"systemd user units {self.service_name} and {self.socket_name}: dbtkd starts "
            f"at login and whenever a client connects to {self.control_socket()}"
        )

    def control_socket(self) -> str:
        """The path the socket unit listens on, as dbtkd.paths computes it for this profile."""
        target = self.target
        return paths.runtime_paths(
            target.env, target.home, platform="linux", uid=target.uid
        ).control_socket

    def listen_stream(self) -> str:
        if self.target.home is None:
            return DEFAULT_LISTEN_STREAM
        return escape_specifiers(
            reject_control_characters(self.control_socket(), "control socket path")
        )

    def files(self) -> dict[str, bytes]:
        target = self.target
        argv = target.daemon_args(with_home=False)  # DBTK_HOME comes from Environment=
        for arg in argv:
            reject_control_characters(arg, "argument")
        if any(ch in argv[0] for ch in EXECUTABLE_REFUSED):
            raise ServiceError(
                f"systemd refuses to start a program whose path contains ' \" or \\: "
                f"{argv[0]}; install DB Toolkit in another directory"
            )
        environment = ""
        if target.home is not None:
            reject_control_characters(target.home, "home")
            environment = "Environment=" + quote_word(
                f"DBTK_HOME={target.home}", expand_dollar=False
            )
        note = escape_specifiers(target.profile_note)
        service = render(
            read_template("systemd/dbtkd.service"),
            {
                "profile_note": note,
                "socket_unit": self.socket_name,
                "environment": environment,
                "exec_start": " ".join(
                    [
                        # The program path is never variable-expanded, so its $ stays single.
                        quote_word(argv[0], expand_dollar=False),
                        *(quote_word(arg, expand_dollar=True) for arg in argv[1:]),
                    ]
                ),
            },
        )
        socket = render(
            read_template("systemd/dbtkd.socket"),
            {
                "profile_note": note,
                "listen_stream": self.listen_stream(),
            },
        )
        return {self.service_path: service.encode(), self.socket_path: socket.encode()}

    def socket_note(self) -> str | None:
        return self.socket_name

    # ----- asking systemd ------------------------------------------------------------------

    def query(self) -> State:
        installed = os.path.exists(self.service_path) or os.path.exists(self.socket_path)
        enabled_on_disk = all(os.path.lexists(link) for link in self.wants_links)
        if not installed:
            return State(installed=False, loaded=False, active=False)
        result = oscmd.run(
            [
                *SYSTEMCTL,
                "show",
                f"--property={SHOWN_PROPERTIES}",
                self.service_name,
                self.socket_name,
            ]
        )
        if not result.ok:
            return State(
                installed=True,
                loaded=enabled_on_disk,
                error=result.message(),
                details={"enabled_on_disk": enabled_on_disk},
            )
        units = parse_show(result.stdout)
        service = units.get(self.service_name, {})
        socket = units.get(self.socket_name, {})
        main_pid = int(service.get("MainPID", "0") or 0)
        return State(
            installed=True,
            loaded=service.get("UnitFileState") == "enabled"
            and socket.get("UnitFileState") == "enabled",
            active=service.get("ActiveState") == "active",
            pid=main_pid or None,
            details={"service": service, "socket": socket, "enabled_on_disk": enabled_on_disk},
        )

    # ----- plans ---------------------------------------------------------------------------

    def install_steps(self, state: State, changed: set[str], daemon_pid: int | None) -> list[Step]:
        steps: list[Step] = []
        if changed:
            steps.append(RunCommand((*SYSTEMCTL, "daemon-reload")))
        steps.append(
            RunCommand((*SYSTEMCTL, "enable", "--now", self.socket_name, self.service_name))
        )
        if self.service_path in changed and state.active:
            # enable --now leaves a running service alone; a new ExecStart needs a restart.
            steps.append(RunCommand((*SYSTEMCTL, "try-restart", self.service_name)))
        return steps

    def uninstall_steps(self, state: State) -> list[Step]:
        present = [
            p
            for p in (self.service_path, self.socket_path, *self.wants_links)
            if os.path.lexists(p)
        ]
        if not present:
            return []
        units = (
            (state.details.get("service"), self.service_name),
            (state.details.get("socket"), self.socket_name),
        )
        failed = [name for unit, name in units if unit and unit.get("ActiveState") == "failed"]
        steps: list[Step] = [
            # Stops the daemon (SIGTERM, KillMode=mixed) and the socket unit, which removes
            # the socket file (RemoveOnStop=yes), and removes the .wants links.
            RunCommand(
                (*SYSTEMCTL, "disable", "--now", self.socket_name, self.service_name), check=False
            ),
        ]
        steps += [RemoveFile(p) for p in (self.service_path, self.socket_path, *self.wants_links)]
        steps.append(RunCommand((*SYSTEMCTL, "daemon-reload"), check=False))
        if failed:
            steps.append(RunCommand((*SYSTEMCTL, "reset-failed", *failed), check=False))
        return steps


def parse_show(text: str) -> dict[str, dict[str, str]]:
    """``systemctl show`` output (blank-line separated blocks of Key=Value) by unit ``Id``."""
    units: dict[str, dict[str, str]] = {}
    for block in text.split("\n\n"):
        properties = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if "Id" in properties:
            units[properties["Id"]] = properties
    return units
