"""Where saved connection passwords are kept: the OS keyring when there is one, else the file.

With a keyring reachable (the Secret Service on Linux — gnome-keyring, KWallet, KeePassXC —
through ``jeepney``, a pure-Python D-Bus client; the Keychain on macOS and the Credential
Manager on Windows through ``keyring``), a saved password is an item of the user's default
collection and ``connections.json`` holds only a reference to it (``"keyring": "<ref>"``, a
random name per password, never the password). Without one (no session bus, no Secret Service,
a locked collection, ``DBTK_PASSWORD_STORE=file``) the password stays in the 0600
``connections.json`` as before.

Moving between the two never loses a password, because a password is removed from one place
only after it is durably in the other:

- to the keyring: when a profile with a password in the file is written while a keyring is
  reachable (every change of the connections store, and once when the worker starts), the
  password is first stored in the keyring (the call returns once the keyring has it), then the
  file is rewritten without it; a crash in between leaves it in the file, and a stray item;
- a changed password gets a new item (new reference); the old item is deleted only after the
  file no longer names it, and so is the item of a deleted connection or a cleared password;
- keyring gone: passwords already in it stay there and the file keeps their references (they
  come back when the keyring does); new and changed passwords go to the file until then.
  Connecting with a password that is only in an unreachable keyring gets no password (the
  database says so), and ``status``/health say the keyring is unreachable and why.

The Secret Service session uses the ``plain`` algorithm: the password crosses the user's own
session bus (a socket only the user can open) unencrypted, as it crosses the loopback HTTP
request that saved it; the Diffie-Hellman variant would need ``cryptography`` (~15 MiB of the
35 MiB frozen bundle budget).

All calls block (D-Bus round trips): call them from a worker thread.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("dbtkd.app.db")

# DBTK_PASSWORD_STORE=file keeps passwords in connections.json even with a keyring (for users
# who sync their data dir, and for tests that must not touch the developer's own keyring).
ENV_STORE = "DBTK_PASSWORD_STORE"
# dbtkd.app.db.profiles.STORE_FILE, for ``report``: not imported, because the supervisor (which
# answers ``dbtkctl status``) loads no app code.
CONNECTIONS_FILE = "connections.json"
KEYRING = "keyring"
FILE = "file"
# The attributes that find our items: an application name, and the random reference.
APPLICATION = "db-toolkit"
# A keyring that does not answer within this long is treated as unreachable (a hung prompt).
DBUS_TIMEOUT = 5.0  # seconds
SECRETS_NAME = "org.freedesktop.secrets"
SECRETS_PATH = "/org/freedesktop/secrets"
DEFAULT_COLLECTION = "/org/freedesktop/secrets/aliases/default"
# What the bus answers when no program owns the Secret Service name (and none is activatable).
NO_SERVICE_ERRORS = (
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
)


class KeyringUnavailable(Exception):
    """No keyring can be used now; the message says why (shown in status and health)."""


class Backend(Protocol):
    name: str

    def probe(self) -> None: ...
    def put(self, ref: str, label: str, password: str) -> None: ...
    def get(self, ref: str) -> str | None: ...
    def delete(self, ref: str) -> None: ...


class SecretService:
    """The freedesktop Secret Service (Linux) over the session bus, with ``jeepney``."""

    name = "Secret Service"

    @contextmanager
    def _session(self) -> Iterator[tuple[Any, str]]:
        try:
            from jeepney import DBusAddress, new_method_call
            from jeepney.io.blocking import open_dbus_connection
        except ImportError as error:  # pragma: no cover - jeepney is a dependency on Linux
            raise KeyringUnavailable(f"jeepney is not installed ({error})") from None
        if sys.platform == "win32":
            raise KeyringUnavailable("the Secret Service is Linux's (Windows: Credential Manager)")
        if not os.environ.get("DBUS_SESSION_BUS_ADDRESS") and not os.path.exists(
            f"/run/user/{os.getuid()}/bus"
        ):
            raise KeyringUnavailable("no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS is not set)")
        try:
            connection = open_dbus_connection(bus="SESSION")
        except (OSError, ValueError, KeyError) as error:
            raise KeyringUnavailable(f"cannot open the D-Bus session bus: {error}") from None
        try:
            service = DBusAddress(SECRETS_PATH, SECRETS_NAME, "org.freedesktop.Secret.Service")
            _, session = self._call(
                connection, new_method_call(service, "OpenSession", "sv", ("plain", ("s", "")))
            )
            yield connection, session
        finally:
            connection.close()

    @staticmethod
    def _call(connection: Any, message: Any) -> Any:
        from jeepney.wrappers import DBusErrorResponse, unwrap_msg

        try:
            return unwrap_msg(connection.send_and_get_reply(message, timeout=DBUS_TIMEOUT))
        except DBusErrorResponse as error:
            if error.name in NO_SERVICE_ERRORS:
                raise KeyringUnavailable(
                    f"no Secret Service on the session bus ({SECRETS_NAME} is not running; "
                    "start a keyring such as gnome-keyring or KeePassXC)"
                ) from None
            raise KeyringUnavailable(f"the Secret Service refused: {error.name}") from None
        except (OSError, TimeoutError) as error:
            raise KeyringUnavailable(f"the Secret Service did not answer: {error!r}") from None

    def _collection(self, connection: Any) -> Any:
        from jeepney import DBusAddress, Properties

        collection = DBusAddress(
            DEFAULT_COLLECTION, SECRETS_NAME, "org.freedesktop.Secret.Collection"
        )
        if self._call(connection, Properties(collection).get("Locked"))[0][1]:
            # Unlocking needs a prompt on the user's screen; never wait for one.
            raise KeyringUnavailable("the default keyring collection is locked (unlock it)")
        return collection

    def _find(self, connection: Any, ref: str) -> list[str]:
        from jeepney import DBusAddress, new_method_call

        service = DBusAddress(SECRETS_PATH, SECRETS_NAME, "org.freedesktop.Secret.Service")
        unlocked, locked = self._call(
            connection,
            new_method_call(
                service, "SearchItems", "a{ss}", ({"application": APPLICATION, "ref": ref},)
            ),
        )
        if locked and not unlocked:
            raise KeyringUnavailable("the keyring item is locked (unlock the keyring)")
        return list(unlocked)

    def probe(self) -> None:
        with self._session() as (connection, _):
            self._collection(connection)

    def put(self, ref: str, label: str, password: str) -> None:
        from jeepney import new_method_call

        with self._session() as (connection, session):
            collection = self._collection(connection)
            properties = {
                "org.freedesktop.Secret.Item.Label": ("s", label),
                "org.freedesktop.Secret.Item.Attributes": (
                    "a{ss}",
                    {"application": APPLICATION, "ref": ref},
                ),
            }
            secret = (session, b"", password.encode(), "text/plain; charset=utf8")
            _, prompt = self._call(
                connection,
                new_method_call(
                    collection, "CreateItem", "a{sv}(oayays)b", (properties, secret, True)
                ),
            )
            if prompt != "/":
                raise KeyringUnavailable("the keyring asked for a prompt to store a password")

    def get(self, ref: str) -> str | None:
        from jeepney import DBusAddress, new_method_call

        with self._session() as (connection, session):
            for path in self._find(connection, ref):
                item = DBusAddress(path, SECRETS_NAME, "org.freedesktop.Secret.Item")
                (secret,) = self._call(
                    connection, new_method_call(item, "GetSecret", "o", (session,))
                )
                return bytes(secret[2]).decode()
        return None

    def delete(self, ref: str) -> None:
        from jeepney import DBusAddress, new_method_call

        with self._session() as (connection, _):
            for path in self._find(connection, ref):
                item = DBusAddress(path, SECRETS_NAME, "org.freedesktop.Secret.Item")
                self._call(connection, new_method_call(item, "Delete"))


class PlatformKeyring:
    """The macOS Keychain or the Windows Credential Manager, through ``keyring``.

    Not run on those systems yet (docs/security.md); the service name is the application, the
    user name the reference.
    """

    def __init__(self) -> None:
        self.name = "Keychain" if sys.platform == "darwin" else "Credential Manager"

    def _backend(self) -> Any:
        try:
            if sys.platform == "darwin":
                from keyring.backends import macOS

                return macOS.Keyring()
            from keyring.backends import Windows

            return Windows.WinVaultKeyring()
        except Exception as error:
            raise KeyringUnavailable(f"{self.name} is not usable: {error}") from None

    def _guard(self, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except Exception as error:
            raise KeyringUnavailable(f"{self.name} refused: {error}") from None

    def probe(self) -> None:
        self._guard(self._backend().get_password, APPLICATION, "probe")

    def put(self, ref: str, label: str, password: str) -> None:
        self._guard(self._backend().set_password, APPLICATION, ref, password)

    def get(self, ref: str) -> str | None:
        value: str | None = self._guard(self._backend().get_password, APPLICATION, ref)
        return value

    def delete(self, ref: str) -> None:
        backend = self._backend()
        try:
            backend.delete_password(APPLICATION, ref)
        except Exception as error:
            if "not found" not in str(error).lower():
                raise KeyringUnavailable(f"{self.name} refused: {error}") from None


def platform_backend() -> Backend | None:
    """The OS keyring of this platform, or None where passwords must stay in the file."""
    if os.environ.get(ENV_STORE, "").strip().lower() == FILE:
        return None
    if sys.platform in ("darwin", "win32"):
        return PlatformKeyring()
    return SecretService()


@dataclass
class StoreStatus:
    store: str  # "keyring" or "file"
    backend: str | None  # which keyring, when one is in use
    reason: str | None  # why the file is used

    def as_dict(self) -> dict[str, Any]:
        return {"store": self.store, "backend": self.backend, "reason": self.reason}


_shared: PasswordVault | None = None
_shared_guard = threading.Lock()


class PasswordVault:
    """The keyring side of the connections store; ``backend`` None means the file only.

    Passwords read from the keyring are cached by reference (a reference names one password
    for good: a new password gets a new one), so a query does not cost a D-Bus round trip.
    """

    def __init__(self, backend: Backend | None = None) -> None:
        self.backend = backend
        self._cache: dict[str, str] = {}
        self._lock = threading.Lock()
        self._last_reason: str | None = None
        # When a read last tried to move passwords from the file (ProfileStore, monotonic).
        self.last_move_try = float("-inf")

    @classmethod
    def shared(cls) -> PasswordVault:
        """This process's vault (one cache for every ProfileStore of it)."""
        global _shared
        with _shared_guard:
            if _shared is None:
                _shared = cls(platform_backend())
            return _shared

    def status(self) -> StoreStatus:
        if self.backend is None:
            return StoreStatus(FILE, None, f"{ENV_STORE}=file")
        try:
            self.backend.probe()
        except KeyringUnavailable as error:
            return StoreStatus(FILE, None, str(error))
        return StoreStatus(KEYRING, self.backend.name, None)

    def store(self, profile_id: str, name: str, password: str) -> str | None:
        """Put ``password`` in the keyring; its new reference, or None to keep it in the file."""
        if self.backend is None:
            return None
        ref = secrets.token_hex(16)
        try:
            self.backend.put(ref, f"DB Toolkit: {name} ({profile_id})", password)
        except KeyringUnavailable as error:
            self._note(str(error))
            return None
        with self._lock:
            self._cache[ref] = password
        return ref

    def fetch(self, ref: str) -> str | None:
        with self._lock:
            if ref in self._cache:
                return self._cache[ref]
        if self.backend is None:
            self._note(f"a password is in the keyring but {ENV_STORE}=file")
            return None
        try:
            password = self.backend.get(ref)
        except KeyringUnavailable as error:
            self._note(str(error))
            return None
        if password is None:
            log.warning("keyring item %s of a saved connection is missing", ref)
            return None
        with self._lock:
            self._cache[ref] = password
        return password

    def discard(self, refs: set[str]) -> None:
        """Delete items the file no longer names (after that file is on disk)."""
        for ref in refs:
            with self._lock:
                self._cache.pop(ref, None)
            if self.backend is None:
                continue
            try:
                self.backend.delete(ref)
            except KeyringUnavailable as error:
                # A stray item: it holds an old password, it is not one anybody needs.
                log.warning("could not delete an old keyring item: %s", error)

    def _note(self, reason: str) -> None:
        if reason != self._last_reason:
            log.warning("passwords: the OS keyring is not usable, using the file: %s", reason)
            self._last_reason = reason


def report(connections_file: str) -> dict[str, Any]:
    """Which store is in use now, and how many saved passwords are in each (for ``dbtkctl
    status`` and ``GET /api/v1/health``). Reads the file as it is; never a password."""
    import json

    in_keyring = in_file = 0
    try:
        with open(connections_file, encoding="utf-8") as file:
            document = json.load(file)
        entries = document.get("connections") if isinstance(document, dict) else None
        for entry in entries or []:
            if isinstance(entry, dict):
                in_keyring += isinstance(entry.get("keyring"), str)
                in_file += bool(entry.get("password")) and not entry.get("keyring")
    except (OSError, ValueError):
        pass  # no file yet, or one the store will set aside: nothing saved to count
    return PasswordVault.shared().status().as_dict() | {
        "in_keyring": in_keyring,
        "in_file": in_file,
    }
