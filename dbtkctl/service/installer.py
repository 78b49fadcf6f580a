"""``dbtkctl service install [--dry-run] | uninstall [--dry-run] | status``: the login item.

The OS is chosen once, here at import: a systemd user service and socket unit on Linux
(``systemd.py``), a LaunchAgent on macOS (``launchd.py``), a logon task or ``Run`` value on
Windows (``windows.py``). Each renders the templates in ``service/`` for a ``Target`` (user,
profile, dbtkd executable) and turns what the OS reports into a plan of steps (``plan.py``);
``install`` and ``uninstall`` are idempotent and ``--dry-run`` prints the plan without
touching anything. Every OS command goes through ``oscmd.run``. Stdlib only, like the rest of
``dbtkctl``, and loaded only by ``dbtkctl service``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import Any

from dbtkctl.service.activation import running_daemon
from dbtkctl.service.loginitem import LoginItem, State, Target, daemon_executable
from dbtkctl.service.plan import (
    ServiceError,
    Step,
    StopDaemon,
    WriteFile,
    apply,
    describe,
    to_json,
)
from dbtkd import paths

if sys.platform == "win32":  # pragma: no cover - exercised through its seams on Linux
    from dbtkctl.service.windows import LogonTask as PlatformItem
elif sys.platform == "darwin":  # pragma: no cover - exercised through its seams on Linux
    from dbtkctl.service.launchd import LaunchAgent as PlatformItem
else:
    from dbtkctl.service.systemd import SystemdUnits as PlatformItem

__all__ = [
    "LoginItem",
    "PlatformItem",
    "ServiceError",
    "State",
    "Target",
    "command",
    "current_target",
    "install",
    "plan_install",
    "plan_uninstall",
    "status",
    "uninstall",
]


def current_target(home: str | None = None, env: Mapping[str, str] | None = None) -> Target:
    """This user, the profile (``--home`` over ``DBTK_HOME``) and this installation's dbtkd."""
    env = os.environ if env is None else env
    return Target(
        home=paths.home_from(env, home),
        user_home=os.path.expanduser("~"),
        executable=daemon_executable(),
        env=dict(env),
        uid=os.getuid() if hasattr(os, "getuid") else 0,
    )


def _runtime(item: LoginItem) -> paths.RuntimePaths:
    return paths.runtime_paths(item.target.env, item.target.home)


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError:
        return None


def plan_install(item: LoginItem) -> list[Step]:
    """The steps that install ``item``: changed files, a takeover if needed, OS commands."""
    files = item.files()
    changed = {path for path, content in files.items() if _read(path) != content}
    current = item.query()
    runtime = _runtime(item)
    daemon = running_daemon(runtime)
    daemon_pid = daemon["pid"] if daemon else None
    steps: list[Step] = [
        WriteFile(path, files[path], item.file_encoding(path)) for path in sorted(changed)
    ]
    if item.takes_over_running_daemon and daemon_pid is not None and daemon_pid != current.pid:
        steps.append(StopDaemon(runtime, daemon_pid))
        daemon_pid = None
    return steps + item.install_steps(current, changed, daemon_pid)


def plan_uninstall(item: LoginItem) -> list[Step]:
    """The steps that stop and unregister ``item`` and remove every file it installed."""
    return item.uninstall_steps(item.query())


def install(item: LoginItem, *, dry_run: bool = False) -> dict[str, Any]:
    """Write the item's files (those that differ), then register and start it."""
    return _install(item, dry_run)[0]


def _install(item: LoginItem, dry_run: bool) -> tuple[dict[str, Any], list[Step]]:
    steps = plan_install(item)
    written = [step.path for step in steps if isinstance(step, WriteFile)]
    document: dict[str, Any] = {
        "action": "install",
        "kind": item.kind,
        "name": item.name,
        "dry_run": dry_run,
        "files": sorted(item.files()),
        "changed": written,
        "steps": to_json(steps),
        "warnings": [],
        "fallback": False,
    }
    if not dry_run:
        outcome = apply(steps)
        document["warnings"] = outcome.warnings
        document["fallback"] = outcome.fell_back
        document["status"] = status(item)
    return document, steps


def uninstall(item: LoginItem, *, dry_run: bool = False) -> dict[str, Any]:
    """Stop and unregister the item and remove every file it installed (if it is there)."""
    return _uninstall(item, dry_run)[0]


def _uninstall(item: LoginItem, dry_run: bool) -> tuple[dict[str, Any], list[Step]]:
    steps = plan_uninstall(item)
    document: dict[str, Any] = {
        "action": "uninstall",
        "kind": item.kind,
        "name": item.name,
        "dry_run": dry_run,
        "was_installed": bool(steps),
        "steps": to_json(steps),
        "warnings": [],
    }
    if not dry_run and steps:
        document["warnings"] = apply(steps).warnings
    return document, steps


def status(item: LoginItem) -> dict[str, Any]:
    """Whether the item is installed, loaded and running, and whether it runs the daemon."""
    current = item.query()
    daemon = running_daemon(_runtime(item))
    daemon_pid = daemon["pid"] if daemon else None
    from_item: bool | None
    if daemon_pid is None:
        from_item = False
    elif current.pid is not None:
        from_item = current.pid == daemon_pid
    else:
        from_item = None if current.active is None and current.loaded else False
    return {
        "action": "status",
        "kind": item.kind,
        "name": item.name,
        "installed": current.installed,
        "loaded": current.loaded,
        "active": current.active,
        "login_item_pid": current.pid,
        "daemon_pid": daemon_pid,
        "daemon_from_login_item": from_item,
        "files": {path: os.path.exists(path) for path in item.files()},
        "details": current.details,
        "error": current.error,
    }


# ----- the dbtkctl verb -------------------------------------------------------------------


def command(
    action: str,
    *,
    home: str | None,
    dry_run: bool,
    json_output: bool,
    item_class: type[LoginItem] = PlatformItem,
) -> int:
    """``dbtkctl service ACTION``: print the outcome (one JSON document with ``--json``)."""
    item = item_class(current_target(home))
    if action == "install":
        document, steps = _install(item, dry_run)
        text = _install_text(item, document, steps)
    elif action == "uninstall":
        document, steps = _uninstall(item, dry_run)
        text = _uninstall_text(item, document, steps)
    else:
        document = status(item)
        text = _status_text(item, document)
    for warning in document.get("warnings", []):
        print(f"dbtkctl: warning: {warning}", file=sys.stderr)
    print(json.dumps(document, indent=2) if json_output else text)
    return 0


def _install_text(item: LoginItem, document: dict[str, Any], steps: list[Step]) -> str:
    if document["dry_run"]:
        header = (
            f"dry run: dbtkctl service install would do this ({item.kind}, "
            f"{item.name}); nothing was changed"
        )
        return "\n".join([header, *(describe(steps, "  ") or ["  nothing"])])
    if document["fallback"]:
        return (
            f"installed {item.name} as an HKCU Run value (Task Scheduler refused the "
            "task): dbtkd starts at your next logon"
        )
    verb = "installed" if document["changed"] else "already installed"
    return f"{verb}: {item.describe()}"


def _uninstall_text(item: LoginItem, document: dict[str, Any], steps: list[Step]) -> str:
    if not document["was_installed"]:
        return f"login item {item.name} is not installed; nothing to remove"
    if document["dry_run"]:
        header = (
            f"dry run: dbtkctl service uninstall would do this ({item.kind}, "
            f"{item.name}); nothing was changed"
        )
        return "\n".join([header, *describe(steps, "  ")])
    return f"removed login item {item.name}"


def _status_text(item: LoginItem, document: dict[str, Any]) -> str:
    if not document["installed"]:
        return f"login item {item.name} ({item.kind}) is not installed"
    facts = [
        "installed",
        {True: "loaded", False: "not loaded", None: "load state unknown"}[document["loaded"]],
    ]
    if document["active"] is not None:
        facts.append("running" if document["active"] else "not running")
    if document["login_item_pid"]:
        facts.append(f"pid {document['login_item_pid']}")
    lines = [f"login item {item.name} ({item.kind}): {', '.join(facts)}"]
    if document["error"]:
        lines.append(f"  could not ask the service manager: {document['error']}")
    daemon_pid = document["daemon_pid"]
    origin = {
        True: "started by this login item",
        False: "not started by this login item",
        None: "whether this login item started it is unknown on this OS",
    }
    lines.append(
        f"  daemon: {'not running' if daemon_pid is None else f'pid {daemon_pid}, '}"
        + ("" if daemon_pid is None else origin[document["daemon_from_login_item"]])
    )
    lines += [
        f"  file: {path}{'' if present else ' (missing)'}"
        for path, present in document["files"].items()
    ]
    return "\n".join(lines)
