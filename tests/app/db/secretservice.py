"""A real, private Secret Service for the keyring tests: a D-Bus session bus and gnome-keyring.

``dbus-daemon`` runs with a configuration of its own that activates no services (so a call to
a keyring that was stopped finds no keyring, as on a machine without one, instead of starting
one), and ``gnome-keyring-daemon --unlock`` runs on that bus with its files in a temporary
HOME: the "login" collection is created and unlocked with a password sent on its stdin, as
a desktop login does. ``stop_keyring``/``start_keyring`` make the keyring disappear and
reappear (same files, so the items are still there); ``lookup`` reads it with ``secret-tool``,
as a user would, ``count`` with ``dbus-send``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.support import wait_until

KEYRING_PASSWORD = b"login-password"
APPLICATION = "db-toolkit"  # dbtkd.passwords.APPLICATION, as the user sees it
BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


def require_tools() -> None:
    missing = [
        tool
        for tool in ("dbus-daemon", "gnome-keyring-daemon", "secret-tool", "dbus-send")
        if shutil.which(tool) is None
    ]
    if missing:
        message = f"{missing} not installed (Debian: dbus gnome-keyring libsecret-tools)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI=true installs them (.ci/run)")
        pytest.skip(message)


class SecretService:
    def __init__(self, root: Path) -> None:
        require_tools()
        self.root = root
        (root / "home").mkdir(mode=0o700)
        (root / "runtime").mkdir(mode=0o700)
        socket = root / "bus"
        (root / "bus.conf").write_text(BUS_CONFIG.format(socket=socket))
        self.address = f"unix:path={socket}"
        self.bus = subprocess.Popen(
            ["dbus-daemon", "--nofork", f"--config-file={root / 'bus.conf'}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(socket.exists, 10, 0.02, "the test's D-Bus session bus to listen")
        self.keyring: subprocess.Popen[bytes] | None = None
        try:
            self.start_keyring()
        except BaseException:
            self.close()
            raise

    def env(self) -> dict[str, str]:
        """What a process needs to find this bus (and nothing of the user's own session)."""
        return {
            "DBUS_SESSION_BUS_ADDRESS": self.address,
            "HOME": str(self.root / "home"),
            "XDG_DATA_HOME": str(self.root / "home" / "share"),
            "XDG_RUNTIME_DIR": str(self.root / "runtime"),
        }

    def _env(self) -> dict[str, str]:
        return os.environ | self.env()

    def start_keyring(self) -> None:
        assert self.keyring is None
        with (self.root / "keyring.log").open("ab") as log:
            self.keyring = subprocess.Popen(
                ["gnome-keyring-daemon", "--foreground", "--unlock", "--components=secrets"],
                env=self._env(),
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=log,
            )
        assert self.keyring.stdin is not None
        self.keyring.stdin.write(KEYRING_PASSWORD)
        self.keyring.stdin.close()
        wait_until(
            self._default_collection_ready,
            15,
            0.05,
            "gnome-keyring to serve the default collection",
        )

    def _default_collection_ready(self) -> bool:
        reply = subprocess.run(
            [
                "dbus-send", "--session", "--print-reply", "--dest=org.freedesktop.secrets",
                "/org/freedesktop/secrets", "org.freedesktop.Secret.Service.ReadAlias",
                "string:default",
            ],
            env=self._env(), capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        return reply.returncode == 0 and "/collection/" in reply.stdout

    def stop_keyring(self) -> None:
        """The keyring goes away (as when a user quits it or logs in over ssh)."""
        assert self.keyring is not None
        self.keyring.send_signal(signal.SIGTERM)
        self.keyring.wait(timeout=10)
        self.keyring = None

    def lookup(self, ref: str) -> str | None:
        """The password under ``ref``, read with ``secret-tool`` (None if there is none)."""
        found = subprocess.run(
            ["secret-tool", "lookup", "application", APPLICATION, "ref", ref],
            env=self._env(), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        return found.stdout if found.returncode == 0 else None

    def count(self) -> int:
        """How many items of ours the keyring holds (``secret-tool search --all`` fails on a
        few hundred items, so this asks the Secret Service directly with ``dbus-send``)."""
        found = subprocess.run(
            [
                "dbus-send", "--session", "--print-reply", "--reply-timeout=120000",
                "--dest=org.freedesktop.secrets", "/org/freedesktop/secrets",
                "org.freedesktop.Secret.Service.SearchItems",
                f"dict:string:string:application,{APPLICATION}",
            ],
            env=self._env(), capture_output=True, text=True, timeout=150, check=False,
        )  # fmt: skip
        if found.returncode != 0:
            # dbus-send's own reply timeout is 25 s, which a loaded machine can exceed; say
            # what the bus and the keyring said rather than a bare exit status.
            raise AssertionError(
                f"dbus-send SearchItems exited {found.returncode}: {found.stderr.strip()}\n"
                f"keyring running: {self.keyring is not None and self.keyring.poll() is None}\n"
                f"gnome-keyring's log:\n{self.keyring_log()}"
            )
        return found.stdout.count('object path "/org/freedesktop/secrets/collection/')

    def keyring_log(self) -> str:
        """The last lines gnome-keyring-daemon wrote (for a failure's message)."""
        path = self.root / "keyring.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return "\n".join(lines[-30:])

    def close(self) -> None:
        for proc in (self.keyring, self.bus):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        self.keyring = None
