"""Engine internals that need no server: statement scanning, drivers imported lazily, the
thread-and-cancel machinery of the blocking engines."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import pytest

from dbtkd.app.db.engine import DriverMissingError, QueryTimeoutError, run_blocking
from dbtkd.app.db.mysql import MysqlEngine, leading_keyword
from dbtkd.app.db.postgresql import PostgresEngine, rows_affected
from dbtkd.app.db.profiles import build_profile
from dbtkd.app.db.sqlite import SqliteEngine, split_script
from dbtkd.app.db.sqlscan import has_several_statements

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("sql", "several"),
    [
        ("SELECT 1", False),
        ("SELECT 1;", False),
        ("SELECT 1; -- done\n", False),
        ("SELECT 1; /* a /* nested */ comment */ ;", False),
        ("SELECT 1; SELECT 2", True),
        ("SELECT 'a;b'", False),
        ("SELECT 'it''s; fine'", False),
        ("SELECT E'a\\';b'", False),
        ('SELECT 1 AS "x;y"', False),
        ("SELECT $$a;b$$", False),
        ("SELECT $fn$ a; $$ ; $fn$", False),
        ("SELECT $1; SELECT 2", True),
        ("SELECT 1 -- ; SELECT 2", False),
        ("CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql; SELECT f()", True),
        ("SELECT 'unterminated; SELECT 2", False),
    ],
)
def test_scripts_are_told_from_single_statements_without_being_fooled_by_literals(
    sql: str, several: bool
) -> None:
    assert has_several_statements(sql) is several


@pytest.mark.parametrize(
    ("script", "statements"),
    [
        ("SELECT 1", ["SELECT 1"]),
        ("SELECT 1; SELECT 2;", ["SELECT 1;", " SELECT 2;"]),
        ("SELECT 'a;b'; SELECT 2", ["SELECT 'a;b';", " SELECT 2"]),
        (
            "CREATE TRIGGER t AFTER INSERT ON x BEGIN SELECT 1; SELECT 2; END; SELECT 3",
            ["CREATE TRIGGER t AFTER INSERT ON x BEGIN SELECT 1; SELECT 2; END;", " SELECT 3"],
        ),
        ("SELECT 1;;  ", ["SELECT 1;"]),
    ],
)
def test_sqlite_scripts_split_where_sqlite_says_statements_end(
    script: str, statements: list[str]
) -> None:
    assert split_script(script) == statements


@pytest.mark.parametrize(
    ("status", "counts_select", "expected"),
    [
        ("INSERT 0 3", True, 3),
        ("UPDATE 2", True, 2),
        ("DELETE 0", True, 0),
        ("CREATE TABLE", True, None),
        ("SELECT 5", True, 5),
        ("SELECT 5", False, None),
        (None, True, None),
    ],
)
def test_postgresql_row_counts_come_from_the_command_tag(
    status: str | None, counts_select: bool, expected: int | None
) -> None:
    assert rows_affected(status, counts_select=counts_select) == expected


@pytest.mark.parametrize(
    ("sql", "keyword"),
    [("  -- c\n /* x */ insert into t", "INSERT"), ("# note\nUPDATE t", "UPDATE"), ("", "")],
)
def test_the_leading_keyword_skips_comments(sql: str, keyword: str) -> None:
    assert leading_keyword(sql) == keyword


async def test_a_missing_driver_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    server = {"name": "x", "host": "127.0.0.1", "username": "u"}
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # makes "import asyncpg" fail
    with pytest.raises(DriverMissingError, match=r"pip install asyncpg"):
        await PostgresEngine.open(build_profile({**server, "db_type": "postgresql"}))
    monkeypatch.setitem(sys.modules, "pymysql", None)
    with pytest.raises(DriverMissingError, match=r"pip install PyMySQL"):
        await MysqlEngine.open(build_profile({**server, "db_type": "mysql"}))


def test_building_the_app_imports_no_driver(tmp_path: Path) -> None:
    script = f"""
import sys
from dbtkd.app import AppConfig, create_app
create_app(AppConfig(token="t", port=1, allowed_origins=(), version="0", daemon_pid=1,
    daemon_started_at=0, worker_started_at=0, worker_restarts=0, log_file="x",
    data_dir={str(tmp_path / "data")!r}))
print(sorted(m for m in ("asyncpg", "pymysql", "sqlite3", "orjson") if m in sys.modules))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
    assert not (tmp_path / "data").exists()  # and touches no file


async def test_a_blocking_statement_past_its_time_limit_is_cancelled_and_reported() -> None:
    stop = threading.Event()
    cancelled: list[float] = []

    async def cancel() -> str:
        cancelled.append(time.monotonic())
        stop.set()
        return "test cancel"

    started = time.monotonic()
    with pytest.raises(QueryTimeoutError, match=r"timeout of 0.2 s \(test cancel\)"):
        await run_blocking(lambda: stop.wait(10), time_limit=0.2, cancel=cancel)
    assert cancelled
    assert cancelled[0] - started < 1


async def test_a_cancelled_caller_cancels_its_blocking_statement_too() -> None:
    stop = threading.Event()

    async def cancel() -> str:
        stop.set()
        return "test cancel"

    with anyio.move_on_after(0.2):
        await run_blocking(lambda: stop.wait(10), time_limit=60, cancel=cancel)
    assert stop.is_set()


async def test_sqlite_interrupts_a_runaway_statement(tmp_path: Path) -> None:
    engine = await SqliteEngine.open(
        build_profile({"name": "x", "db_type": "sqlite", "database": str(tmp_path / "x.db")})
    )
    try:
        started = time.monotonic()
        with pytest.raises(QueryTimeoutError, match="sqlite3_interrupt"):
            await engine.execute(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
                "SELECT count(*) FROM c",
                None,
                limit=1,
                offset=0,
                time_limit=0.3,
            )
        assert time.monotonic() - started < 2
        result = await engine.execute("SELECT 7", None, limit=1, offset=0, time_limit=1)
        assert result.rows == [[7]]
    finally:
        await engine.close()
