"""The Windows login item: a Task Scheduler logon task, or an HKCU ``Run`` value as fallback.

The task (schema version 1.3) starts ``dbtkd.exe`` directly when the current user logs on,
with the user's own token and no elevation, no time limit, on battery too. ``schtasks /Create
/XML`` wants the file in UTF-16 with a byte order mark. Where policy forbids creating tasks,
``schtasks`` fails and install writes ``HKCU\\...\\Run`` instead (no admin rights needed; it
starts dbtkd at the next logon). Task Scheduler passes no environment, so the profile's home
goes on the command line as ``--home``. ``schtasks`` and ``reg`` run through the ``oscmd``
seam; nothing here has run on Windows yet.
"""

from __future__ import annotations

import codecs
import os
import subprocess
from xml.sax.saxutils import escape

from dbtkctl.service import oscmd
from dbtkctl.service.loginitem import LoginItem, State, read_template, render
from dbtkctl.service.plan import RemoveFile, RunCommand, ServiceError, Step

TASK_BASENAME = "DBToolkit-dbtkd"
RUN_KEY = r"HKCU\Software\Microsoft\Windows\CurrentVersion\Run"
SCHTASKS = "schtasks"
REG = "reg"


def command_line(argv: list[str]) -> str:
    """argv as one Windows command line (the quoting CreateProcess and the C runtime undo)."""
    return subprocess.list2cmdline(argv)


class LogonTask(LoginItem):
    """Task ``DBToolkit-dbtkd[-<id>]``, or the ``Run`` value of the same name."""

    kind = "windows"
    # A second dbtkd would only meet the instance lock and exit; the running one serves on.
    takes_over_running_daemon = False

    @property
    def name(self) -> str:
        return TASK_BASENAME + self.target.suffix

    @property
    def xml_path(self) -> str:
        base = self.target.env.get("LOCALAPPDATA") or os.path.join(
            self.target.user_home, "AppData", "Local"
        )
        return os.path.join(base, "db-toolkit", "login-items", self.name + ".xml")

    def user_id(self) -> str:
        env = self.target.env
        user = env.get("USERNAME")
        if not user:
            raise ServiceError("cannot tell the current Windows user (USERNAME is not set)")
        domain = env.get("USERDOMAIN")
        return f"{domain}\\{user}" if domain else user

    def describe(self) -> str:
        return f"logon task {self.name}: dbtkd starts when {self.user_id()} logs on"

    def files(self) -> dict[str, bytes]:
        argv = self.target.daemon_args(with_home=True)
        xml = render(
            read_template("windows/dbtkd.xml"),
            {
                "description": escape(
                    f"DB Toolkit backend daemon (dbtkd{self.target.profile_note})"
                ),
                "user_id": escape(self.user_id()),
                "command": escape(argv[0]),
                "arguments": escape(command_line(argv[1:])),
            },
        )
        text = xml.replace("\r\n", "\n").replace("\n", "\r\n")
        return {self.xml_path: codecs.BOM_UTF16_LE + text.encode("utf-16-le")}

    def file_encoding(self, path: str) -> str:
        return "utf-16"

    def query(self) -> State:
        task = oscmd.run([SCHTASKS, "/Query", "/TN", self.name]).ok
        run_value = oscmd.run([REG, "query", RUN_KEY, "/v", self.name]).ok
        # Task Scheduler does not say which process a task started; the daemon's pid is
        # compared with nothing, so "started by the login item" stays unknown here.
        return State(
            installed=task or run_value,
            loaded=task or run_value,
            active=None,
            details={"task": task, "run_value": run_value},
        )

    def run_value_steps(self) -> tuple[Step, ...]:
        data = command_line(self.target.daemon_args(with_home=True))
        return (
            RemoveFile(self.xml_path),
            RunCommand((REG, "add", RUN_KEY, "/v", self.name, "/t", "REG_SZ", "/d", data, "/f")),
        )

    def install_steps(self, state: State, changed: set[str], daemon_pid: int | None) -> list[Step]:
        if state.details.get("task") and not changed:
            return []
        then: list[Step] = []
        if state.details.get("run_value"):
            then.append(RunCommand((REG, "delete", RUN_KEY, "/v", self.name, "/f")))
        if daemon_pid is None:
            then.append(RunCommand((SCHTASKS, "/Run", "/TN", self.name)))
        create = RunCommand(
            (SCHTASKS, "/Create", "/TN", self.name, "/XML", self.xml_path, "/F"),
            then=tuple(then),
            fallback=self.run_value_steps(),
        )
        return [create]

    def uninstall_steps(self, state: State) -> list[Step]:
        steps: list[Step] = []
        if state.details.get("task"):
            steps.append(RunCommand((SCHTASKS, "/Delete", "/TN", self.name, "/F")))
        if state.details.get("run_value"):
            steps.append(RunCommand((REG, "delete", RUN_KEY, "/v", self.name, "/f")))
        if os.path.lexists(self.xml_path):
            steps.append(RemoveFile(self.xml_path))
        return steps
