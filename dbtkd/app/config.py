"""The settings the worker hands to the app: one frozen object, built once per worker.

The worker knows the token, the port it serves, the allowlist and the supervisor's facts
(pid, start times, restart count, log file); the app only reads them. Keeping them in one
value object lets tests build an app with a hand-made config and no daemon around it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class AppConfig:
    """Everything ``create_app`` needs; the token is kept out of ``repr`` so it never logs."""

    # Secret: compared with hmac.compare_digest, never logged, never echoed in a response.
    token: str = field(repr=False)
    # The port the worker serves; the Host check accepts only 127.0.0.1:PORT and localhost:PORT.
    port: int
    # Exact-match Origin allowlist; "null" and "file://" are refused whatever it says.
    allowed_origins: tuple[str, ...]
    version: str
    daemon_pid: int
    daemon_started_at: float  # epoch seconds, supervisor start
    worker_started_at: float  # epoch seconds
    worker_restarts: int
    log_file: str  # the supervisor's dbtkd.log, followed by /ws/logs
    data_dir: str
    config_file: str = ""  # dbtkd.toml; read for settings that apply per job (tool_paths)
    # Test-only switches ("raise" adds GET /api/v1/_test/raise); empty in production.
    test_faults: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        # An empty token would make "Authorization: Bearer " a valid credential.
        if not self.token:
            raise ValueError("expected a non-empty token; got an empty string")
        if not 0 < self.port < 65536:
            raise ValueError(f"expected a TCP port 1-65535 (the one being served); got {self.port}")
