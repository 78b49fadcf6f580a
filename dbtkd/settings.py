"""The daemon's settings: one frozen object built from flags, environment and ``dbtkd.toml``.

Precedence is flag > environment (``DBTK_*``) > config file > default, validated once here so
nothing downstream re-checks a value. The environment is a parameter, so tests pass a dict
instead of patching ``os.environ``. Stdlib only (plus ``dbtkd.paths``): ``dbtkctl`` uses the
parsers to check ``--port-range`` before spawning a daemon.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from dbtkd import paths
from dbtkd.errors import ConfigError
from dbtkd.port import parse_port_range
from dbtkd.units import SECONDS

# The old per-window backend picked from 8000-8100; keeping the range keeps firewall rules
# and muscle memory that users already have.
DEFAULT_PORT_RANGE = (8000, 8100)
DEFAULT_ALLOWED_ORIGINS = ("app://dbtk", "http://localhost:5173", "http://127.0.0.1:5173")
# Long enough that a worker busy with a slow query is not mistaken for a hung one.
DEFAULT_WATCHDOG_TIMEOUT = 10 * SECONDS
DEFAULT_LOG_MAX_BYTES = 5 * 1024 * 1024  # 5 files x 5 MiB caps the logs at 25 MiB
DEFAULT_LOG_BACKUPS = 5
LOG_LEVELS = ("debug", "info", "warning", "error")
# A daemon a client started on demand (``dbtkd --on-demand``, as dbtkctl and Electron start it)
# goes away this long after its last client (DESIGN §2), unless a flag, DBTK_IDLE_EXIT or
# dbtkd.toml says otherwise.
ON_DEMAND_IDLE_EXIT = 600 * SECONDS
# Origins that identify no one: every sandboxed iframe and local file shares them.
NEVER_ALLOWED_ORIGINS = frozenset({"null", "file://"})

KEYS = (
    "port_range",
    "allowed_origins",
    "idle_exit",
    "watchdog_timeout",
    "log_level",
    "log_max_bytes",
    "log_backups",
    "tool_paths",
    "ai",
    "issues",
    "worker_start",
)
# Tables only dbtkd.toml can hold; ai and issues are read again by the worker on each use
# (dbtkd.services), checked here so a mistake stops the start with its sentence.
FILE_ONLY = ("tool_paths", "ai", "issues")


class Settings(NamedTuple):
    """Immutable once built. A NamedTuple rather than a dataclass: ``dbtkctl`` imports this
    module before it starts a daemon, and dataclasses (with inspect) would cost it ~5 ms."""

    runtime: paths.RuntimePaths
    data: paths.DataPaths
    port_range: tuple[int, int] | None  # None: let the OS pick (``--port-range 0``)
    allowed_origins: tuple[str, ...] = DEFAULT_ALLOWED_ORIGINS
    idle_exit: float | None = None
    watchdog_timeout: float = DEFAULT_WATCHDOG_TIMEOUT
    log_level: str = "info"
    log_max_bytes: int = DEFAULT_LOG_MAX_BYTES
    log_backups: int = DEFAULT_LOG_BACKUPS
    tool_paths: Mapping[str, str] = MappingProxyType({})
    worker_start: str = "spawn"
    takeover: bool = False

    @property
    def home(self) -> str | None:
        return self.runtime.home

    def port_range_text(self) -> str:
        return "0" if self.port_range is None else f"{self.port_range[0]}-{self.port_range[1]}"


def parse_seconds(value: object, source: str, *, allow_none: bool = False) -> float | None:
    if allow_none and value in (None, "", "0", 0, "off", "none"):
        return None
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = -1.0
    if not seconds > 0 or seconds != seconds or seconds == float("inf"):
        raise ConfigError(f"{source}: expected a positive number of seconds, got {value!r}")
    return seconds


def parse_origins(value: object, source: str) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
        raise ConfigError(f"{source}: expected a list of origins, got {value!r}")
    origins = tuple(i.strip().rstrip("/") for i in items if i.strip())
    for origin in origins:
        if origin in NEVER_ALLOWED_ORIGINS or "://" not in origin:
            raise ConfigError(
                f"{source}: {origin!r} is not an allowed origin (scheme://host[:port]; "
                "'null' and 'file://' are never allowed)"
            )
    return origins


def _parse_log_level(value: object, source: str) -> str:
    if isinstance(value, str) and value.lower() in LOG_LEVELS:
        return value.lower()
    raise ConfigError(f"{source}: expected one of {', '.join(LOG_LEVELS)}, got {value!r}")


def _parse_positive_int(value: object, source: str) -> int:
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        number = 0
    assert isinstance(number, int)
    if isinstance(value, bool) or number <= 0:
        raise ConfigError(f"{source}: expected a positive integer, got {value!r}")
    return number


def _parse_tool_paths(value: object, source: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError(f'{source}: expected a table of tool = "path", got {value!r}')
    return dict(value)


# How a worker is started: "spawn", a new interpreter each time (after a crash, ~100 ms until
# /health answers, ~150 ms until the app does), or "fork" (Linux), forked from a process that
# has imported the worker already (dbtkd.zygote: ~30 ms, for ~15% more memory:
# bench/README.md). Spawn is the default: every launch of the app pays the cold start, which
# is shorter (a spawned worker answers before it has imported the app; the zygote imports all
# of it before its first fork), and the memory all day; the outage only when a worker crashes.
WORKER_START = ("spawn", "fork")


def _parse_worker_start(value: object, source: str) -> str:
    if value not in WORKER_START:
        raise ConfigError(f'{source}: expected "spawn" or "fork", got {value!r}')
    return str(value)


def _services() -> Any:
    """``dbtkd.services``, imported only for a file that has ``ai`` or ``issues`` (its
    dataclasses would cost ``dbtkctl`` ~5 ms before it can start a daemon)."""
    from dbtkd import services

    return services


PARSERS: dict[str, Any] = {
    "port_range": parse_port_range,
    "allowed_origins": parse_origins,
    "idle_exit": lambda v, s: parse_seconds(v, s, allow_none=True),
    "watchdog_timeout": parse_seconds,
    "log_level": _parse_log_level,
    "log_max_bytes": _parse_positive_int,
    "log_backups": _parse_positive_int,
    "tool_paths": _parse_tool_paths,
    "ai": lambda v, s: _services().parse_ai(v, s),
    "issues": lambda v, s: _services().parse_issues(v, s),
    "worker_start": _parse_worker_start,
}


def read_config_file(path: str) -> dict[str, Any]:
    """The raw table in ``dbtkd.toml`` (empty if there is no file); unknown keys are errors."""
    import tomllib  # only when there is a file: it costs the supervisor ~0.5 MiB

    try:
        with open(path, "rb") as file:
            table = tomllib.load(file)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; known keys: {', '.join(KEYS)}")
    return table


def load(
    flags: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    *,
    home: str | None = None,
    takeover: bool = False,
    on_demand: bool = False,
) -> Settings:
    """Build the settings; ``flags`` maps keys of ``KEYS`` to values given on the command line.
    ``on_demand``: a client started this daemon, so ``idle_exit`` defaults to
    ``ON_DEMAND_IDLE_EXIT`` (below every source, like any default)."""
    env = os.environ if env is None else env
    runtime = paths.runtime_paths(env, home)
    data = paths.data_paths(env, home)
    file_values = read_config_file(data.config_file)
    values: dict[str, Any] = {}
    for key in KEYS:
        env_name = "DBTK_" + key.upper()
        if flags.get(key) is not None:
            raw, source = flags[key], "--" + key.replace("_", "-")
        elif env.get(env_name):
            raw, source = env[env_name], env_name
        elif key in file_values:
            raw, source = file_values[key], f"{data.config_file}: {key}"
        else:
            continue
        if key in FILE_ONLY and isinstance(raw, str):
            raise ConfigError(f"{source}: {key} can only be set in dbtkd.toml")
        values[key] = PARSERS[key](raw, source)
    _services().check_private(data.config_file, file_values)
    values.pop("ai", None)  # validated; the worker reads them when a request needs them
    values.pop("issues", None)
    if on_demand and "idle_exit" not in values:
        values["idle_exit"] = ON_DEMAND_IDLE_EXIT
    return Settings(
        runtime=runtime,
        data=data,
        port_range=values.pop("port_range", DEFAULT_PORT_RANGE),
        takeover=takeover,
        **values,
    )
