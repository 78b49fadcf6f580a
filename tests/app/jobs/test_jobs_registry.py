"""The ``Jobs`` registry in-process: cancelling kills, reaps and cleans up within its budget;
a dead worker's jobs are failed at start, and only what is provably theirs is killed."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from dbtkd.app import programs
from dbtkd.app.jobs import CANCEL_ALL_TIMEOUT, Jobs, RunningJob, new_id
from dbtkd.app.programs import child_environment, spawn
from dbtkd.app.recordstore import RecordStore
from tests.support import pid_alive, wait_until

SLEEPER_WITH_GRANDCHILD = (
    "import subprocess, sys, time\n"
    "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "print(p.pid, flush=True)\n"
    "time.sleep(60)\n"
)


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts as another worker's leftovers; killed and reaped after it."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.kill()
        process.wait(timeout=10)


def sleeper(started: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(["sleep", "60"], process_group=0)
    started.append(process)
    return process


@pytest.mark.anyio
async def test_cancel_all_kills_and_reaps_the_group_removes_partials_and_records_why(
    tmp_path: Path,
) -> None:
    jobs = Jobs(str(tmp_path))
    partial = tmp_path / ".partial"
    pids: list[int] = []
    both_started = anyio.Event()

    async def body(job: RunningJob) -> dict[str, Any]:
        await job.add_partial(str(partial))
        partial.write_bytes(b"half a backup")
        child = await spawn(
            [sys.executable, "-c", SLEEPER_WITH_GRANDCHILD],
            env=child_environment(),
            stdout=asyncio.subprocess.PIPE,
        )
        await job.add_child(child)
        assert child.process.stdout is not None
        pids.extend([child.pid, int(await child.process.stdout.readline())])
        both_started.set()
        await child.wait()
        return {}

    async with anyio.create_task_group() as group:
        await jobs.startup(group)
        record = await jobs.submit({"id": new_id(), "kind": "backup", "name": "big"}, body)
        with anyio.fail_after(10):
            await both_started.wait()
        assert [(j["id"], j["kind"], j["name"]) for j in jobs.running()] == [
            (record["id"], "backup", "big")
        ]
        started = anyio.current_time()
        await jobs.cancel_all("interrupted by stop")
        assert anyio.current_time() - started < CANCEL_ALL_TIMEOUT + 0.5
        assert jobs.running() == []
        group.cancel_scope.cancel()
    assert not pid_alive(pids[0])  # the leader, reaped by us
    wait_until(lambda: not pid_alive(pids[1]), 5)  # the grandchild, killed with the group
    assert not partial.exists()
    stored = jobs.store.read_sync()[record["id"]]
    assert (stored["status"], stored["error"]) == ("failed", "interrupted by stop")
    assert (stored["pgids"], stored["partial_files"]) == ([], [])


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.mark.anyio
async def test_a_dead_workers_jobs_fail_and_only_their_own_groups_are_killed(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]], dead_pid: int
) -> None:
    orphan_dump, reused_pid, live_worker = (sleeper(sleepers) for _ in range(3))
    partial = tmp_path / "backups" / ".partial"
    partial.parent.mkdir()
    partial.write_bytes(b"half")

    def ticks(process: subprocess.Popen[bytes]) -> int | None:
        return programs.start_ticks(process.pid)

    def job(worker: int, worker_ticks: Any, pgids: list[list[Any]], **more: Any) -> dict[str, Any]:
        return {
            "id": new_id(),
            "kind": "backup",
            "name": "x",
            "status": "in_progress",
            "created_at": "2025-01-01T00:00:00+00:00",
            "worker_pid": worker,
            "worker_ticks": worker_ticks,
            "pgids": pgids,
            **more,
        }

    crashed = job(
        dead_pid, 1, [[orphan_dump.pid, ticks(orphan_dump)]], partial_files=[str(partial)]
    )
    # A pid reused since by an unrelated program: its start time does not match.
    reused = job(dead_pid, 1, [[reused_pid.pid, (ticks(reused_pid) or 0) + 1]])
    # A live worker's job (the old daemon's, during a version handoff): not ours to touch.
    elsewhere = job(live_worker.pid, ticks(live_worker), [])
    store = RecordStore(str(tmp_path), "jobs.json", "jobs")
    await store.update(
        lambda records: records.update({r["id"]: r for r in (crashed, reused, elsewhere)})
    )

    jobs = Jobs(str(tmp_path))
    async with anyio.create_task_group() as group:
        await jobs.startup(group)
        group.cancel_scope.cancel()
    records = store.read_sync()
    for failed in (crashed, reused):
        assert (records[failed["id"]]["status"], records[failed["id"]]["error"]) == (
            "failed",
            "worker restarted",
        )
    assert records[elsewhere["id"]]["status"] == "in_progress"
    assert orphan_dump.wait(timeout=5) == -9
    assert reused_pid.poll() is None
    assert not partial.exists()


@pytest.mark.anyio
async def test_two_workers_writing_the_store_keep_each_others_records(tmp_path: Path) -> None:
    first = RecordStore(str(tmp_path), "jobs.json", "jobs")
    second = RecordStore(str(tmp_path), "jobs.json", "jobs")
    async with anyio.create_task_group() as group:
        for index in range(20):
            store = first if index % 2 else second
            group.start_soon(
                store.update, lambda records, i=index: records.update({f"r{i}": {"id": f"r{i}"}})
            )
    assert sorted(first.read_sync()) == sorted(f"r{i}" for i in range(20))


@pytest.mark.anyio
async def test_a_store_from_a_newer_daemon_is_read_but_never_written(tmp_path: Path) -> None:
    (tmp_path / "jobs.json").write_text('{"format": 2, "jobs": [{"id": "a"}], "future": true}')
    store = RecordStore(str(tmp_path), "jobs.json", "jobs")
    assert list(store.read_sync()) == ["a"]
    from dbtkd.app.store import StoreTooNewError

    with pytest.raises(StoreTooNewError, match="format 2"):
        await store.update(lambda records: records.clear())
    assert "future" in (tmp_path / "jobs.json").read_text()


@pytest.mark.anyio
async def test_a_job_deleted_while_it_runs_is_never_written_back(tmp_path: Path) -> None:
    # What a backup deleted from another window (or after its cancel gave up) still writes
    # about itself must not bring its record back.
    jobs = Jobs(str(tmp_path))
    deleted = anyio.Event()

    async def body(job: RunningJob) -> dict[str, Any]:
        await deleted.wait()
        await job.add_partial(str(tmp_path / ".late-partial"))
        return {}

    async with anyio.create_task_group() as group:
        await jobs.startup(group)
        record = await jobs.submit({"id": new_id(), "kind": "backup", "name": "x"}, body)
        assert await jobs.delete(record["id"]) is not None
        deleted.set()
        assert (await jobs.wait(record["id"]) or {}).get("status") == "completed"
        group.cancel_scope.cancel()
    assert record["id"] not in jobs.store.read_sync()
