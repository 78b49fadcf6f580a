"""The one configuration parser (dbtkd/settings.py), shared by dbtkd and dbtkctl: every key from
every source, the precedence flag > environment > file > default, and the same refusal of a bad
value from each source (issue 15, item 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dbtkd import settings
from dbtkd.errors import ConfigError

# key: (a valid value as a flag or environment variable, as TOML, what it parses to,
#       an invalid value as text)
VALUES: dict[str, tuple[str | None, str, Any, str]] = {
    "port_range": ("9000-9010", '"9000-9010"', (9000, 9010), "9010-9000"),
    "allowed_origins": (
        "app://x,http://localhost:3000",
        '["app://x", "http://localhost:3000"]',
        ("app://x", "http://localhost:3000"),
        "null",
    ),
    "idle_exit": ("42", "42", 42.0, "ten"),
    "watchdog_timeout": ("7.5", "7.5", 7.5, "-1"),
    "log_level": ("debug", '"debug"', "debug", "loud"),
    "log_max_bytes": ("1000", "1000", 1000, "0"),
    "log_backups": ("3", "3", 3, "many"),
    "tool_paths": (None, '{pg_dump = "/opt/pg_dump"}', {"pg_dump": "/opt/pg_dump"}, "x"),
    "ai": (None, '{provider = "openai", model = "m"}', {"provider": "openai", "model": "m"}, "x"),
    "issues": (None, '{provider = "github"}', {"provider": "github"}, "x"),
    "worker_start": ("fork", '"fork"', "fork", "clone"),
}
OTHER = {  # a second valid value per key, to tell sources apart
    "port_range": ("9100-9110", '"9100-9110"', (9100, 9110)),
    "allowed_origins": ("app://y", '["app://y"]', ("app://y",)),
    "idle_exit": ("43", "43", 43.0),
    "watchdog_timeout": ("8", "8", 8.0),
    "log_level": ("error", '"error"', "error"),
    "log_max_bytes": ("2000", "2000", 2000),
    "log_backups": ("4", "4", 4),
    "tool_paths": (None, '{psql = "/opt/psql"}', {"psql": "/opt/psql"}),
    "ai": (None, '{provider = "cloudflare"}', {"provider": "cloudflare"}),
    "issues": (None, '{provider = "resend"}', {"provider": "resend"}),
    "worker_start": ("spawn", '"spawn"', "spawn"),
}


def test_the_table_covers_every_key() -> None:
    assert set(VALUES) == set(settings.KEYS) == set(OTHER)


def value_of(loaded: settings.Settings, key: str) -> Any:
    """The key's value as the daemon uses it: the [ai] and [issues] tables are validated at
    start and read by the worker when used (dbtkd.services), so they are not on Settings."""
    if key in ("ai", "issues"):
        table = settings.read_config_file(loaded.data.config_file).get(key)
        return None if table is None else settings.PARSERS[key](table, key)
    return getattr(loaded, key)


def load(home: Path, flags: dict[str, Any], env: dict[str, str], toml: str) -> settings.Settings:
    config = home / "config" / "dbtkd.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(toml, encoding="utf-8")
    return settings.load(flags, env, home=str(home))


@pytest.mark.parametrize("key", settings.KEYS)
@pytest.mark.parametrize("source", ["flag", "env", "file"])
def test_every_key_from_every_source(tmp_path: Path, key: str, source: str) -> None:
    text, toml, parsed, _ = VALUES[key]
    if text is None and source != "file":
        # tool_paths is a table: only the file can say it; elsewhere it is refused.
        with pytest.raises(ConfigError, match=r"only be set in dbtkd\.toml"):
            load(tmp_path, {key: "x"} if source == "flag" else {}, _env(key, "x", source), "")
        return
    flags = {key: text} if source == "flag" else {}
    toml_text = f"{key} = {toml}\n" if source == "file" else ""
    loaded = load(tmp_path, flags, _env(key, text or "", source), toml_text)
    assert value_of(loaded, key) == parsed


def _env(key: str, text: str, source: str) -> dict[str, str]:
    return {"DBTK_" + key.upper(): text} if source == "env" else {}


@pytest.mark.parametrize("key", settings.KEYS)
def test_precedence_is_flag_then_environment_then_file(tmp_path: Path, key: str) -> None:
    text, toml, parsed, _ = VALUES[key]
    other_text, other_toml, other_parsed = OTHER[key]
    if text is None:
        assert value_of(load(tmp_path, {}, {}, f"{key} = {toml}\n"), key) == parsed
        return
    file_only = load(tmp_path, {}, {}, f"{key} = {other_toml}\n")
    assert value_of(file_only, key) == other_parsed
    env_over_file = load(tmp_path, {}, _env(key, text, "env"), f"{key} = {other_toml}\n")
    assert value_of(env_over_file, key) == parsed
    assert other_text is not None
    flag_over_env = load(tmp_path, {key: other_text}, _env(key, text, "env"), "")
    assert value_of(flag_over_env, key) == other_parsed


@pytest.mark.parametrize("key", settings.KEYS)
@pytest.mark.parametrize("source", ["flag", "env", "file"])
def test_a_bad_value_is_refused_naming_its_source(tmp_path: Path, key: str, source: str) -> None:
    bad = VALUES[key][3]
    if key in settings.FILE_ONLY and source != "file":
        return  # refused above whatever its value
    flags = {key: bad} if source == "flag" else {}
    toml_text = f'{key} = "{bad}"\n' if source == "file" else ""
    with pytest.raises(ConfigError) as refused:
        load(tmp_path, flags, _env(key, bad, source), toml_text)
    where = {"flag": "--" + key.replace("_", "-"), "env": "DBTK_" + key.upper(), "file": key}
    assert where[source] in str(refused.value)


def test_on_demand_idle_exit_is_a_default_below_every_source(tmp_path: Path) -> None:
    def idle(flags: dict[str, Any], env: dict[str, str], toml: str) -> float | None:
        config = tmp_path / "config" / "dbtkd.toml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(toml, encoding="utf-8")
        return settings.load(flags, env, home=str(tmp_path), on_demand=True).idle_exit

    assert idle({}, {}, "") == settings.ON_DEMAND_IDLE_EXIT
    assert idle({}, {}, "idle_exit = 45\n") == 45
    assert idle({}, {}, 'idle_exit = "off"\n') is None
    assert idle({}, {"DBTK_IDLE_EXIT": "30"}, "idle_exit = 45\n") == 30
    assert idle({"idle_exit": "20"}, {"DBTK_IDLE_EXIT": "30"}, "") == 20
    assert settings.load({}, {}, home=str(tmp_path)).idle_exit is None  # not on demand: never
