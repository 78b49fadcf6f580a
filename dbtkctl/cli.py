"""``dbtkctl``: start, stop, inspect and find the per-user DB Toolkit daemon.

Each verb is a ``do_<verb>(args) -> int`` function; ``main`` parses arguments and turns every
``DbtkError`` into its exit code in one place (0 ok, 1 failure, 2 usage, 3 not running, 4
could not start or failed). With ``--json`` exactly one JSON document goes to stdout;
warnings and progress go to stderr. Stdlib plus the stdlib-only parts of ``dbtkd``: ``dbtkctl
port`` must cost little more than starting Python.
"""

from __future__ import annotations

import json
import os
import sys
import time
from types import SimpleNamespace

from dbtkctl.client import Client, ensure_running, last_start_errors, upgrade_if_older
from dbtkd import __version__, paths, protocol
from dbtkd.errors import DaemonError, DbtkError, NotRunning, environment_problem
from dbtkd.procstats import pid_alive

TYPE_CHECKING = False  # typing and argparse cost ~7 ms; see _fast_args
if TYPE_CHECKING:
    import argparse
    from typing import Any

SECONDS = 1.0
STOP_TIMEOUT = 5 * SECONDS
# Beyond the worker's drain, the supervisor needs a moment to remove its files and exit.
STOP_EXIT_GRACE = 5 * SECONDS
DEFAULT_LOG_LINES = 50


def _emit(args: argparse.Namespace | SimpleNamespace, document: dict[str, Any], text: str) -> None:
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print(text)


def _client(args: argparse.Namespace | SimpleNamespace) -> Client:
    return Client(paths.runtime_paths(home=args.home))


def _spawn_args(args: argparse.Namespace | SimpleNamespace, *, on_demand: bool = True) -> list[str]:
    """dbtkd's flags for a daemon started here, checked by dbtkd's own parsers first (a usage
    error before anything is spawned). Daemons started on demand go away when no one uses
    them (DESIGN §2): ``--on-demand`` makes that dbtkd's default, below the flag, the
    environment and ``dbtkd.toml``, so their ``idle_exit`` still counts."""
    from dbtkd.settings import PARSERS

    extra: list[str] = ["--on-demand"] if on_demand else []
    for key in ("port_range", "idle_exit"):
        value = getattr(args, key, None)
        if value is not None:
            flag = "--" + key.replace("_", "-")
            PARSERS[key](value, flag)
            extra += [flag, value]
    return extra


def _warn_if_settings_differ(args: argparse.Namespace | SimpleNamespace, client: Client) -> None:
    wanted = {
        "port_range": getattr(args, "port_range", None),
        "idle_exit": getattr(args, "idle_exit", None),
    }
    if not any(wanted.values()):
        return
    status = client.call("status")
    for key, value in wanted.items():
        if value is None:
            continue
        running = status.get(key)
        if str(running) != value and not (
            isinstance(running, float)
            and value.replace(".", "", 1).isdigit()
            and float(value) == running
        ):
            print(
                f"dbtkctl: warning: dbtkd is already running with {key} = {running}; "
                f"--{key.replace('_', '-')} {value} applies only to a daemon it starts "
                "(dbtkctl stop first)",
                file=sys.stderr,
            )


def _port_document(
    result: dict[str, Any], started: bool, handoff: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "port": result["port"],
        "url": result["url"],
        "token": result["token"],
        "pid": result["pid"],
        "version": result["version"],
        "started": started,
        "handoff": handoff,
    }


def _running_port(args: argparse.Namespace | SimpleNamespace) -> tuple[dict[str, Any], bool]:
    client = _client(args)
    args.handoff = None
    if getattr(args, "no_start", False):
        return client.call("port"), False
    result, started = ensure_running(client, _spawn_args(args))
    if not started:
        _warn_if_settings_differ(args, client)
        result, args.handoff = upgrade_if_older(
            client, result, allow_development=getattr(args, "takeover", False)
        )
    return result, started


def do_port(args: argparse.Namespace | SimpleNamespace) -> int:
    result, started = _running_port(args)
    if args.json:
        print(json.dumps(_port_document(result, started, args.handoff)))
    else:
        print(result["port"])
    return 0


def do_url(args: argparse.Namespace | SimpleNamespace) -> int:
    result, started = _running_port(args)
    _emit(args, {"url": result["url"], "port": result["port"], "started": started}, result["url"])
    return 0


def do_start(args: argparse.Namespace | SimpleNamespace) -> int:
    if args.foreground:
        from dbtkctl.client import daemon_command

        argv = daemon_command() + _spawn_args(args, on_demand=False)
        if args.home:
            argv += ["--home", args.home]
        os.execv(argv[0], argv)
    result, started = _running_port(args)
    verb = "started" if started else "already running"
    _emit(
        args,
        _port_document(result, started, args.handoff) | {"token": None},
        f"dbtkd {verb}: pid {result['pid']}, {result['url']}",
    )
    return 0


def do_stop(args: argparse.Namespace | SimpleNamespace) -> int:
    unit = _waiting_socket_unit(args)
    if unit is not None:
        _emit(
            args,
            {"stopped": False, "was_running": False, "socket_unit": unit},
            f"dbtkd is not running; the login item ({unit}) starts it again on first use",
        )
        return 0
    client = _client(args)
    try:
        status = client.call("status")
    except NotRunning:
        _emit(args, {"stopped": False, "was_running": False}, "dbtkd is not running")
        return 0
    pid = status["pid"]
    reply = client.call("stop", timeout=args.timeout, wait=args.wait)
    jobs = reply.get("jobs") or []
    if jobs:
        how = "until they finish" if args.wait else f"up to {args.timeout:g} s, then cancelling"
        print(f"dbtkctl: {len(jobs)} job(s) running; waiting {how}:", file=sys.stderr)
        for job in jobs:
            print(
                f"  {job.get('kind', 'job')} {job.get('name', '')!r} (id {job.get('id')})",
                file=sys.stderr,
            )
    deadline = None if args.wait else time.monotonic() + args.timeout + STOP_EXIT_GRACE
    while pid_alive(pid):
        if deadline is not None and time.monotonic() > deadline:
            raise DbtkError(f"dbtkd (pid {pid}) did not exit; see dbtkctl logs")
        time.sleep(0.01)
    from dbtkctl.service.activation import socket_unit

    unit = socket_unit(paths.runtime_paths(home=args.home))
    note = f"; the login item ({unit}) starts it again on first use" if unit else ""
    _emit(
        args,
        {"stopped": True, "was_running": True, "pid": pid, "socket_unit": unit, "jobs": jobs},
        f"dbtkd stopped (pid {pid}){note}",
    )
    return 0


def do_restart(args: argparse.Namespace | SimpleNamespace) -> int:
    client = _client(args)
    result = client.call("restart")
    _emit(args, result, f"worker restarted: pid {result['worker_pid']}, port {result['port']}")
    return 0


def _stopped_status(args: argparse.Namespace | SimpleNamespace) -> dict[str, Any]:
    runtime = paths.runtime_paths(home=args.home)
    data = paths.data_paths(home=args.home)
    return {
        "state": "stopped",
        "pid": None,
        "worker_pid": None,
        "port": None,
        "url": None,
        "version": None,
        "client_version": __version__,
        "uptime": None,
        "restarts": {},
        "clients": [],
        "control_socket": runtime.control_socket,
        "home": runtime.home,
        "log_file": data.log_file,
        "data_dir": data.data_dir,
        "config_file": data.config_file,
        "idle_exit": None,
        # What the last daemon started here wrote to stderr before it exited, in its words.
        "last_start_error": last_start_errors(runtime) or None,
    }


def _format_status(status: dict[str, Any]) -> str:
    if status["state"] == "stopped":
        text = f"dbtkd is not running\n  log: {status['log_file']}"
        said = status.get("last_start_error") or []
        if said:
            text += "\n  the last start failed; dbtkd said:\n" + "\n".join(
                "    " + line for line in said
            )
        return text
    restarts = ", ".join(f"{k} {v}" for k, v in sorted(status["restarts"].items())) or "none"
    clients = ", ".join(f"{c['name']} (pid {c['pid']})" for c in status["clients"]) or "none"
    lines = [
        f"dbtkd {status['state']}",
        f"  version      {status['version']} (protocol {status.get('protocol')})",
        f"  pid          {status['pid']} (worker {status['worker_pid']})",
        f"  url          {status['url']}",
        f"  uptime       {status['uptime']:.0f} s",
        f"  restarts     {restarts}",
        f"  memory       {_format_processes(status.get('processes') or {})}",
        f"  clients      {clients}",
        f"  idle exit    {status['idle_exit'] or 'off'}",
        f"  control      {status['control_socket']}",
        f"  home         {status['home'] or '(per-OS defaults)'}",
        f"  log          {status['log_file']}",
        f"  data         {status['data_dir']}",
        f"  config       {status['config_file']}",
        f"  passwords    {_format_passwords(status.get('passwords'))}",
    ]
    if status.get("log_error"):
        lines.insert(1, f"  log problem  {status['log_error']}")
    error = status.get("error")
    if error:
        lines.insert(1, f"  reason       {error['reason']}")
        lines.insert(2, f"  last exit    {error.get('exit')}")
        lines[3:3] = ["  last output  " + line for line in error.get("stderr", [])]
    return "\n".join(lines)


def _format_processes(processes: dict[str, Any]) -> str:
    parts = []
    total_pss = 0
    for name, stats in processes.items():
        pss, cpu = stats.get("pss_bytes"), stats.get("cpu_seconds")
        if pss is None:
            continue
        total_pss += pss
        parts.append(f"{name} {pss / 2**20:.1f} MiB PSS, {cpu or 0:.2f} s CPU")
    if not parts:
        return "unknown"
    return f"{total_pss / 2**20:.1f} MiB PSS in all ({'; '.join(parts)})"


def _format_passwords(passwords: dict[str, Any] | None) -> str:
    """``OS keyring (Secret Service), 3 there, 0 in connections.json`` or why the file is used."""
    if not passwords:
        return "unknown (daemon too old to say)"
    counts = f"{passwords['in_keyring']} in the keyring, {passwords['in_file']} in the file"
    if passwords["store"] == "keyring":
        return f"OS keyring ({passwords['backend']}); {counts}"
    return f"connections.json (0600): {passwords['reason']}; {counts}"


def do_status(args: argparse.Namespace | SimpleNamespace) -> int:
    unit = _waiting_socket_unit(args)
    if unit is not None:
        status = _stopped_status(args) | {"socket_activated": True, "socket_unit": unit}
        _emit(
            args,
            status,
            f"dbtkd stopped (socket-activated): {unit} starts it on first use\n"
            f"  log: {status['log_file']}",
        )
        return NotRunning.exit_code
    try:
        status = _client(args).call("status")
    except NotRunning:
        status = _stopped_status(args)
    _emit(args, status, _format_status(status))
    if status["state"] == "stopped":
        return NotRunning.exit_code
    if status["state"] == "failed":
        return 4
    return 0


def do_logs(args: argparse.Namespace | SimpleNamespace) -> int:
    from dbtkd.logfile import tail

    log_file = paths.data_paths(home=args.home).log_file
    if args.follow:
        try:
            result, events = _client(args).stream("logs", lines=args.lines, follow=True)
        except NotRunning:
            print(f"dbtkctl: dbtkd is not running; showing {log_file}", file=sys.stderr)
        else:
            for line in result["lines"]:
                print(line)
            sys.stdout.flush()
            try:
                for event in events:
                    if event.get("event") == "log":
                        print(event["line"], flush=True)
            except KeyboardInterrupt:
                return 0
            return 0
    lines = tail(log_file, args.lines)
    if args.json:
        print(json.dumps({"log_file": log_file, "lines": lines}))
    else:
        for line in lines:
            print(line)
    return 0


def do_version(args: argparse.Namespace | SimpleNamespace) -> int:
    document: dict[str, Any] = {
        "client": {"version": __version__, "protocol": protocol.PROTOCOL_VERSION},
        "daemon": None,
    }
    try:
        hello = _client(args).call("hello")
        document["daemon"] = {
            "version": hello["version"],
            "protocol": hello["protocol"],
            "pid": hello["pid"],
        }
    except NotRunning:
        pass
    daemon = document["daemon"]
    text = f"dbtkctl {__version__}\n" + (
        f"dbtkd {daemon['version']} (running, pid {daemon['pid']})"
        if daemon
        else "dbtkd not running"
    )
    _emit(args, document, text)
    return 0


def do_service(args: argparse.Namespace | SimpleNamespace) -> int:
    from dbtkctl.service.installer import command

    return command(args.action, home=args.home, dry_run=args.dry_run, json_output=args.json)


def _waiting_socket_unit(args: argparse.Namespace | SimpleNamespace) -> str | None:
    """The systemd socket unit holding the control socket while no daemon runs, if any.

    Connecting would start the daemon, so ``status`` and ``stop`` look at files instead.
    """
    from dbtkctl.service.activation import waiting_socket_unit

    return waiting_socket_unit(paths.runtime_paths(home=args.home))


def _fast_args(argv: list[str]) -> SimpleNamespace | None:
    """Parse the hot path (``port``/``url`` with --home, --json, --no-start) without argparse.

    Electron and scripts call ``dbtkctl port`` on every window start; argparse (and the
    gettext and locale machinery it imports) would add about a quarter to its run time. Any
    other command line, including every error, goes to the full parser.
    """
    args = SimpleNamespace(
        verb=None,
        home=None,
        json=False,
        no_start=False,
        port_range=None,
        idle_exit=None,
        takeover=False,
    )
    items = iter(argv)
    for item in items:
        if item in ("port", "url") and args.verb is None:
            args.verb = item
        elif item == "--json":
            args.json = True
        elif item == "--no-start" and args.verb is not None:
            args.no_start = True
        elif item == "--home":
            args.home = next(items, None)
            if not args.home:
                return None
        elif item.startswith("--home="):
            args.home = item.partition("=")[2]
        elif item in ("--port-range", "--idle-exit"):
            value = next(items, None)
            if value is None or value.startswith("-"):
                return None  # let argparse explain the usage error
            setattr(args, item[2:].replace("-", "_"), value)
        elif item == "--takeover":
            args.takeover = True
        else:
            return None
    return args if args.verb is not None else None


def _parser() -> argparse.ArgumentParser:
    import argparse

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--home",
        default=argparse.SUPPRESS,
        help="profile directory (default: $DBTK_HOME, else per-OS dirs)",
    )
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print exactly one JSON document on stdout",
    )
    spawn = argparse.ArgumentParser(add_help=False)
    spawn.add_argument("--port-range", help="for a daemon started here: A-B or 0")
    spawn.add_argument("--idle-exit", help="for a daemon started here: seconds (default 600)")
    spawn.add_argument(
        "--takeover",
        action="store_true",
        help="upgrade an older running daemon even if either version is a development build",
    )

    parser = argparse.ArgumentParser(
        prog="dbtkctl",
        parents=[common],
        description="Control the per-user DB Toolkit backend daemon (dbtkd).",
        epilog="exit codes: 0 ok, 1 failure, 2 usage, 3 not running, 4 could not start/failed",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True)
    port = verbs.add_parser(
        "port", parents=[common, spawn], help="print the port, starting the daemon if needed"
    )
    port.add_argument("--no-start", action="store_true", help="exit 3 if not running")
    url = verbs.add_parser("url", parents=[common, spawn], help="print http://127.0.0.1:PORT")
    url.add_argument("--no-start", action="store_true", help="exit 3 if not running")
    start = verbs.add_parser("start", parents=[common, spawn], help="start the daemon")
    start.add_argument(
        "--foreground", action="store_true", help="run dbtkd in this terminal (no idle exit)"
    )
    stop = verbs.add_parser("stop", parents=[common], help="stop the daemon")
    stop.add_argument(
        "--timeout",
        type=float,
        default=STOP_TIMEOUT,
        help="seconds to let running jobs finish (default 5)",
    )
    stop.add_argument("--wait", action="store_true", help="wait for running jobs to finish")
    verbs.add_parser("restart", parents=[common], help="restart the worker (port kept)")
    verbs.add_parser("status", parents=[common], help="show the daemon's state")
    logs = verbs.add_parser("logs", parents=[common], help="show the daemon's log")
    logs.add_argument("-n", "--lines", type=int, default=DEFAULT_LOG_LINES)
    logs.add_argument("-f", "--follow", action="store_true")
    service = verbs.add_parser("service", parents=[common], help="manage the login item")
    service.add_argument("action", choices=["install", "uninstall", "status"])
    service.add_argument("--dry-run", action="store_true")
    verbs.add_parser("version", parents=[common], help="client and daemon versions")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args: argparse.Namespace | SimpleNamespace | None = _fast_args(argv)
    if args is None:
        try:
            args = _parser().parse_args(argv)
        except SystemExit as exc:  # argparse: --help is 0, bad usage is 2
            return int(exc.code or 0)
        args.home = getattr(args, "home", None)
        args.json = getattr(args, "json", False)
    handler = globals()["do_" + args.verb]
    try:
        return int(handler(args))
    except DaemonError as exc:
        code = 4 if exc.code == protocol.NOT_READY else 1
        _fail(args, str(exc), code)
        return code
    except DbtkError as exc:
        _fail(args, str(exc), exc.exit_code)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
    except OSError as exc:  # a file or socket we could not use: say which, no traceback
        _fail(args, environment_problem(exc), 1)
        return 1


def _fail(args: argparse.Namespace | SimpleNamespace, message: str, code: int) -> None:
    if args.json:
        print(json.dumps({"error": message, "exit_code": code}))
    print(f"dbtkctl: {message}", file=sys.stderr)
