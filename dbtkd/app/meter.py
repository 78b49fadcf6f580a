"""Request metering in the worker: activity for idle exit, and durations for ``/metrics``.

``Meter`` wraps the whole app (outside the security middleware, so a refused request is still
activity and still timed). It counts requests in flight (an open WebSocket is one), remembers
when the last one ended, and keeps a latency histogram per route template and method — the
template (``/api/v1/connections/{id}``), never the raw path, so the number of series stays
bounded whatever clients send. The supervisor learns ``idle_for`` through the watchdog's
pongs; ``render`` turns everything into Prometheus text.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Mapping
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

# Prometheus' default buckets, which suit an API whose answers range from a cached status
# (milliseconds) to a slow query (seconds).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNMATCHED = "<unmatched>"  # 401s, 404s and refusals before routing share one series


class Histogram:
    __slots__ = ("buckets", "count", "total")

    def __init__(self) -> None:
        self.buckets = [0] * len(BUCKETS)
        self.count = 0
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        for index, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.buckets[index] += 1


class Meter:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.in_flight = 0
        self.requests_total = 0
        self.last_activity = time.monotonic()
        self.durations: dict[tuple[str, str], Histogram] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        self.in_flight += 1
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            self.requests_total += 1
            self.last_activity = time.monotonic()
            if scope["type"] == "http":
                route = getattr(scope.get("route"), "path", None) or UNMATCHED
                key = (route, scope["method"])
                histogram = self.durations.get(key)
                if histogram is None:
                    histogram = self.durations[key] = Histogram()
                histogram.observe(time.perf_counter() - started)

    def idle_for(self) -> float:
        """Seconds since the last request ended; 0 while any request or WebSocket is open."""
        return 0.0 if self.in_flight else time.monotonic() - self.last_activity


def _labels(**labels: str) -> str:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in labels.items()) + "}"


def render(
    meter: Meter,
    *,
    processes: Mapping[str, Mapping[str, Any]],
    uptime_seconds: float,
    restarts: Mapping[str, int],
    leases: int,
    websockets: Mapping[str, int],
    app_load_seconds: float | None = None,
) -> str:
    """Prometheus text exposition format 0.0.4."""
    out: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")

    family("dbtk_uptime_seconds", "gauge", "Seconds since the daemon started.")
    out.append(f"dbtk_uptime_seconds {uptime_seconds:.3f}")
    for metric, key, help_text in (
        ("dbtk_process_resident_memory_bytes", "rss_bytes", "Resident set size."),
        ("dbtk_process_proportional_memory_bytes", "pss_bytes", "Proportional set size."),
        ("dbtk_process_cpu_seconds_total", "cpu_seconds", "User and system CPU time."),
    ):
        family(metric, "counter" if metric.endswith("_total") else "gauge", help_text)
        for process, stats in processes.items():
            if stats.get(key) is not None:
                out.append(f"{metric}{_labels(process=process)} {stats[key]}")
    if app_load_seconds is not None:
        family(
            "dbtk_worker_app_load_seconds",
            "gauge",
            "Seconds from the worker's first serving to its app loaded and started.",
        )
        out.append(f"dbtk_worker_app_load_seconds {app_load_seconds:.4f}")
    family("dbtk_worker_gc_enabled", "gauge", "1 once the worker's cyclic collector is on.")
    out.append(f"dbtk_worker_gc_enabled {int(gc.isenabled())}")
    family(
        "dbtk_worker_gc_frozen_objects",
        "gauge",
        "Objects from the worker's start-up that its collector no longer scans.",
    )
    out.append(f"dbtk_worker_gc_frozen_objects {gc.get_freeze_count()}")
    family("dbtk_worker_restarts_total", "counter", "Worker restarts by cause.")
    for cause, count in sorted(restarts.items()):
        out.append(f"dbtk_worker_restarts_total{_labels(cause=cause)} {count}")
    family("dbtk_leases", "gauge", "Clients attached to the daemon.")
    out.append(f"dbtk_leases {leases}")
    family("dbtk_websockets_open", "gauge", "Open WebSockets by stream.")
    for stream, count in sorted(websockets.items()):
        out.append(f"dbtk_websockets_open{_labels(stream=stream)} {count}")
    family("dbtk_http_requests_in_flight", "gauge", "HTTP requests and WebSockets being served.")
    out.append(f"dbtk_http_requests_in_flight {meter.in_flight}")
    family(
        "dbtk_http_request_duration_seconds",
        "histogram",
        "HTTP request duration by route template and method.",
    )
    for (route, method), histogram in sorted(meter.durations.items()):
        # Buckets are cumulative already: ``observe`` counts a sample in every bound it fits.
        for bound, count in zip(BUCKETS, histogram.buckets, strict=True):
            out.append(
                "dbtk_http_request_duration_seconds_bucket"
                f"{_labels(route=route, method=method, le=repr(bound))} {count}"
            )
        out.append(
            "dbtk_http_request_duration_seconds_bucket"
            f"{_labels(route=route, method=method, le='+Inf')} {histogram.count}"
        )
        labels = _labels(route=route, method=method)
        out.append(f"dbtk_http_request_duration_seconds_sum{labels} {histogram.total:.6f}")
        out.append(f"dbtk_http_request_duration_seconds_count{labels} {histogram.count}")
    return "\n".join(out) + "\n"
