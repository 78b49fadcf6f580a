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
from dbtkd.errors import DaemonError, DbtkError, NotRunning, UsageError, environment_problem
from dbtkd.procstats import pid_alive
from dbtkd.units import SECONDS

TYPE_CHECKING = False  # typing and argparse cost ~7 ms; see _fast_args
if TYPE_CHECKING:
    import argparse
    from typing import Any


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
        _port_document(result, started, args.handoff),  # the same document as port --json
        f"dbtkd {verb}: pid {result['pid']}, {result['url']}",
    )
    return 0


def do_stop(args: argparse.Namespace | SimpleNamespace) -> int:
    if not args.timeout >= 0 or args.timeout == float("inf"):
        raise UsageError(f"--timeout: expected a number of seconds >= 0, got {args.timeout:g}")
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
    """A new worker on the same port (the supervisor and token stay); a stopped daemon is
    started instead, as ``systemctl restart`` and ``docker restart`` do."""
    client = _client(args)
    try:
        result = client.call("restart")
    except NotRunning:
        started, _ = _running_port(args)
        result = {
            "started": True,
            "pid": started["pid"],
            "port": started["port"],
            "url": started["url"],
        }
        _emit(args, result, f"dbtkd was not running; started: pid {result['pid']}, {result['url']}")
        return 0
    _emit(
        args,
        result | {"started": False},
        f"worker restarted: pid {result['worker_pid']}, port {result['port']}",
    )
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
        f"  idle exit    {_seconds(status['idle_exit'])}",
        f"  control      {status['control_socket']}",
        f"  home         {status['home'] or '(per-OS defaults)'}",
        f"  log          {status['log_file']}",
        f"  data         {status['data_dir']}",
        f"  config       {status['config_file']}",
        f"  passwords    {_format_passwords(status.get('passwords'))}",
        f"  ai           {_format_service(status.get('ai'))}",
        f"  issues       {_format_service(status.get('issues'))}",
    ]
    if status.get("log_error"):
        lines.insert(1, f"  log problem  {status['log_error']}")
    error = status.get("error")
    if error:
        lines.insert(1, f"  reason       {error['reason']}")
        lines.insert(2, f"  last exit    {error.get('exit')}")
        lines[3:3] = ["  last output  " + line for line in error.get("stderr", [])]
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    return "off" if not value else f"{value:g} s"


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


def _format_service(service: dict[str, Any] | None) -> str:
    """``openai (llama3) at http://127.0.0.1:11434/v1`` or why not; never a key."""
    if not service:
        return "unknown (daemon too old to say)"
    if service.get("error"):
        return f"not usable: {service['error']}"
    if not service.get("configured"):
        return "not configured (dbtkd.toml: see README, Configuration)"
    what = service.get("model") or service.get("to") or ""
    return f"{service['provider']} ({what}) at {service['base_url']}"


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

    if args.lines < 0:
        raise UsageError(f"--lines: expected a number of lines >= 0, got {args.lines}")
    log_file = paths.data_paths(home=args.home).log_file
    if args.follow:
        try:
            result, events = _client(args).stream("logs", lines=args.lines, follow=True)
        except NotRunning:
            print(f"dbtkctl: dbtkd is not running; showing {log_file}", file=sys.stderr)
        else:
            # With --json, one JSON document per line ({"line": ...}), as follow streams do.
            def show(line: str) -> None:
                print(json.dumps({"line": line}) if args.json else line, flush=True)

            for line in result["lines"]:
                show(line)
            try:
                for event in events:
                    if event.get("event") == "log":
                        show(event["line"])
            except KeyboardInterrupt:
                return 0
            return 0
    lines = tail(log_file, args.lines)
    if args.json and args.follow:  # not running: the lines as JSON lines all the same
        for line in lines:
            print(json.dumps({"line": line}))
    elif args.json:
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


class _UsageError(UsageError):
    """A command line argparse refused; ``usage`` is the command's usage line."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.usage = usage


def _parser() -> argparse.ArgumentParser:
    import argparse

    class Parser(argparse.ArgumentParser):
        """argparse that raises instead of printing and exiting, so a usage error keeps the
        ``--json`` promise (one document on stdout) like every other outcome."""

        def error(self, message: str) -> Any:
            raise _UsageError(message, self.format_usage().strip())

    common = Parser(add_help=False)
    common.add_argument(
        "--home",
        default=argparse.SUPPRESS,
        help="profile directory: the daemon, its files and its data live under it "
        "(default: $DBTK_HOME, else the per-OS directories)",
    )
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print exactly one JSON document on stdout, whatever happens (logs -f: one per line)",
    )
    spawn = Parser(add_help=False)
    spawn.add_argument(
        "--port-range",
        metavar="A-B",
        help="for a daemon started by this command: ports to try, or 0 for any free one "
        "(default 8000-8100)",
    )
    spawn.add_argument(
        "--idle-exit",
        metavar="SECONDS",
        help="for a daemon started by this command: exit this long after the last client "
        "(default: DBTK_IDLE_EXIT, else idle_exit in dbtkd.toml, else 600)",
    )
    spawn.add_argument(
        "--takeover",
        action="store_true",
        help="upgrade an older running daemon even if either version is a development build",
    )

    parser = Parser(
        prog="dbtkctl",
        parents=[common],
        description="Control the per-user DB Toolkit backend daemon (dbtkd): start it, find "
        "its port, stop it, and see what it is doing.",
        epilog="exit codes: 0 ok, 1 failure, 2 usage, 3 not running, 4 could not start or "
        "failed. `dbtkctl COMMAND --help` describes each command.",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True)

    def command(name: str, summary: str, description: str, *parents: Any) -> Any:
        return verbs.add_parser(
            name, parents=[common, *parents], help=summary, description=description
        )

    for name, summary, description in (
        (
            "port",
            "print the daemon's port, starting it if needed",
            "Print the port of your dbtkd, starting one if none runs (it then exits after its "
            "idle time without clients). With --json: port, url, token, pid, version, started, "
            "handoff.",
        ),
        (
            "url",
            "print http://127.0.0.1:PORT, starting the daemon if needed",
            "Print the daemon's base URL (always 127.0.0.1), starting one if none runs.",
        ),
    ):
        finder = command(name, summary, description, spawn)
        finder.add_argument(
            "--no-start", action="store_true", help="never start; exit 3 if none runs"
        )
    start = command(
        "start",
        "start the daemon (nothing to do if it runs)",
        "Start dbtkd in the background unless it already runs; print its pid and URL.",
        spawn,
    )
    start.add_argument(
        "--foreground",
        action="store_true",
        help="run dbtkd in this terminal instead (no idle exit; Ctrl-C stops it)",
    )
    stop = command(
        "stop",
        "stop the daemon",
        "Stop dbtkd: running jobs (backups, restores) get --timeout seconds to finish, then are "
        "cancelled; connections close; the port is released.",
    )
    stop.add_argument(
        "--timeout",
        type=float,
        default=STOP_TIMEOUT,
        metavar="SECONDS",
        help=f"how long running jobs may take to finish (default {STOP_TIMEOUT:g} s)",
    )
    stop.add_argument(
        "--wait", action="store_true", help="wait for running jobs however long they take"
    )
    command(
        "restart",
        "replace the worker, same port and token; start the daemon if stopped",
        "Replace the worker process (the supervisor, port and token stay, so clients keep "
        "working). If no daemon runs, start one, as systemctl restart does.",
        spawn,
    )
    command(
        "status",
        "show state, pids, port, restarts, clients, memory and paths",
        "Show the daemon's state and where its files are. Exit 0 running, 3 stopped (with the "
        "reason if the last start failed), 4 failed.",
    )
    logs = command(
        "logs",
        "show the daemon's log",
        "Print the end of the daemon's log file (it need not be running).",
    )
    logs.add_argument(
        "-n",
        "--lines",
        type=int,
        default=DEFAULT_LOG_LINES,
        metavar="N",
        help=f"how many of the last lines to print (default {DEFAULT_LOG_LINES})",
    )
    logs.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing new lines as the daemon writes them, until Ctrl-C",
    )
    service = command(
        "service",
        "install, remove or inspect the login item",
        "Manage the login item that starts dbtkd when you log in: a systemd user unit "
        "(Linux), a LaunchAgent (macOS) or a logon task (Windows).",
    )
    service.add_argument(
        "action",
        choices=["install", "uninstall", "status"],
        help="install or uninstall the login item, or show whether it is installed",
    )
    service.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be written and run, change nothing",
    )
    command(
        "version",
        "print the versions of dbtkctl and of the running daemon",
        "Print this dbtkctl's version and protocol, and the running daemon's if one runs.",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args: argparse.Namespace | SimpleNamespace | None = _fast_args(argv)
    if args is None:
        try:
            args = _parser().parse_args(argv)
        except SystemExit as exc:  # --help (0)
            return int(exc.code or 0)
        except _UsageError as exc:
            # --json anywhere, even misplaced: the caller asked for one document.
            _fail(SimpleNamespace(json="--json" in argv), str(exc), exc.exit_code)
            print(exc.usage, file=sys.stderr)
            return exc.exit_code
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
