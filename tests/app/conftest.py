"""Fixtures for the app tests: the anyio backend, a temp log file, a config and an app."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from starlette.applications import Starlette

from dbtkd.app import AppConfig, create_app
from tests.app.asgi_calls import ALLOWED_ORIGINS, PORT, TOKEN


@pytest.fixture
def anyio_backend() -> str:
    # The worker runs Hypercorn on asyncio; test what ships.
    return "asyncio"


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "logs" / "dbtkd.log"
    path.parent.mkdir()
    path.write_text("")
    return path


@pytest.fixture
def app_config(tmp_path: Path, log_file: Path) -> AppConfig:
    now = time.time()
    return AppConfig(
        token=TOKEN,
        port=PORT,
        allowed_origins=ALLOWED_ORIGINS,
        version="9.9.9",
        daemon_pid=4242,
        daemon_started_at=now - 100,
        worker_started_at=now - 10,
        worker_restarts=3,
        log_file=str(log_file),
        data_dir=str(tmp_path / "data"),
    )


@pytest.fixture
def app(app_config: AppConfig) -> Starlette:
    return create_app(app_config)
