"""The macOS login item: a LaunchAgent in ``~/Library/LaunchAgents``, loaded into ``gui/<uid>``.

``RunAtLoad`` starts dbtkd when the agent is loaded (at login, and at install); ``KeepAlive``
with ``SuccessfulExit`` false restarts it after a crash but not after ``dbtkctl stop``. The
profile's home goes in ``EnvironmentVariables``. ``launchctl bootstrap``/``bootout`` (the
domain-target forms that replaced ``load``/``unload``) run through the ``oscmd`` seam; nothing
here has run on a Mac yet, so the plist is checked structurally and the commands exactly.
"""

from __future__ import annotations

import os
import re
from xml.sax.saxutils import escape

from dbtkctl.service import oscmd
from dbtkctl.service.loginitem import LoginItem, State, read_template, render
from dbtkctl.service.plan import MakeDir, RemoveFile, RunCommand, Step

LABEL = "com.dbtoolkit.dbtkd"
LAUNCHCTL = "launchctl"
# platformdirs' user_log_dir on macOS, for the default profile.
DEFAULT_LOG_DIR = os.path.join("Library", "Logs", "db-toolkit")
STDOUT_NAME = "launchd-stdout.log"
STDERR_NAME = "launchd-stderr.log"
PRINTED_PID = re.compile(r"^\s*pid = (\d+)\s*$", re.MULTILINE)
PRINTED_STATE = re.compile(r"^\s*state = (\S+)\s*$", re.MULTILINE)
INDENT = "    "


class LaunchAgent(LoginItem):
    """``<label>.plist`` for the user's GUI session."""

    kind = "launchd"
    takes_over_running_daemon = True  # a second dbtkd would exit 1 and be retried forever

    @property
    def name(self) -> str:
        return self.label

    @property
    def label(self) -> str:
        suffix = self.target.suffix
        return LABEL + ("." + suffix[1:] if suffix else "")

    @property
    def plist_path(self) -> str:
        return os.path.join(self.target.user_home, "Library", "LaunchAgents", self.label + ".plist")

    @property
    def domain(self) -> str:
        return f"gui/{self.target.uid}"

    @property
    def service_target(self) -> str:
        return f"{self.domain}/{self.label}"

    @property
    def log_dir(self) -> str:
        if self.target.home is not None:
            return os.path.join(self.target.home, "logs")
        return os.path.join(self.target.user_home, DEFAULT_LOG_DIR)

    @property
    def log_files(self) -> list[str]:
        return [os.path.join(self.log_dir, STDOUT_NAME), os.path.join(self.log_dir, STDERR_NAME)]

    def describe(self) -> str:
        return (
            f"LaunchAgent {self.label} ({self.plist_path}): dbtkd starts at login and "
            "again after a crash"
        )

    def files(self) -> dict[str, bytes]:
        target = self.target
        arguments = "\n".join(
            f"{INDENT * 2}<string>{escape(arg)}</string>"
            for arg in target.daemon_args(with_home=False)
        )
        environment = ""
        if target.home is not None:
            environment = "\n".join(
                [
                    f"{INDENT}<key>EnvironmentVariables</key>",
                    f"{INDENT}<dict>",
                    f"{INDENT * 2}<key>DBTK_HOME</key>",
                    f"{INDENT * 2}<string>{escape(target.home)}</string>",
                    f"{INDENT}</dict>",
                ]
            )
        stdout_path, stderr_path = self.log_files
        plist = render(
            read_template("launchd/dbtkd.plist"),
            {
                "label": escape(self.label),
                "program_arguments": arguments,
                "environment_variables": environment,
                "stdout_path": escape(stdout_path),
                "stderr_path": escape(stderr_path),
            },
        )
        return {self.plist_path: plist.encode()}

    def query(self) -> State:
        installed = os.path.exists(self.plist_path)
        result = oscmd.run([LAUNCHCTL, "print", self.service_target])
        if not result.ok:
            return State(installed=installed, loaded=False, active=False)
        pid = PRINTED_PID.search(result.stdout)
        state = PRINTED_STATE.search(result.stdout)
        return State(
            installed=installed,
            loaded=True,
            active=state is not None and state.group(1) == "running",
            pid=int(pid.group(1)) if pid else None,
            details={"state": state.group(1) if state else None},
        )

    def install_steps(self, state: State, changed: set[str], daemon_pid: int | None) -> list[Step]:
        # launchd opens the log files itself and does not create their directory.
        steps: list[Step] = [MakeDir(self.log_dir)]
        reload = self.plist_path in changed
        if state.loaded and reload:
            steps.append(RunCommand((LAUNCHCTL, "bootout", self.service_target)))
        if not state.loaded or reload:
            steps.append(RunCommand((LAUNCHCTL, "bootstrap", self.domain, self.plist_path)))
        return steps

    def uninstall_steps(self, state: State) -> list[Step]:
        steps: list[Step] = []
        if state.loaded:
            # SIGTERM to dbtkd (ExitTimeOut later, SIGKILL), then the job is forgotten.
            steps.append(RunCommand((LAUNCHCTL, "bootout", self.service_target), check=False))
        steps += [RemoveFile(p) for p in (self.plist_path, *self.log_files) if os.path.lexists(p)]
        return steps
