"""The UI's settings: ``GET/PUT /api/v1/settings`` and ``POST /api/v1/settings/reset``.

Thirteen values the DB Toolkit UI shows in its settings modal (UI-CONTRACT §7): theme, editor
options, the query editor's default limit and timeout, the new-connection form's engine, and
three the old backend used itself (history retention, connect timeout, auto-reconnect). They
live in ``settings.json`` in the data dir, through the one store primitive, so every window
sees the same values and two windows saving at once both land (each PUT is merged over the
freshest copy under the store's lock). What is stored is only what differs from the defaults,
so a later version's new defaults reach users who never changed them.

A PUT takes any subset; ``null`` means "unchanged" (the UI sends it for a cleared number
field) and unknown keys are ignored, as the old backend did. A value out of range is refused
with 422 naming the field and its range, and nothing is saved. Every answer is the whole
object. Each change is published on ``/ws/events`` as ``settings_changed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from dbtkd.app.endpoints import ApiError, JSONResponse, invalid, read_object
from dbtkd.app.events import publish
from dbtkd.app.store import Document, Store

STORE_FILE = "settings.json"


@dataclass(frozen=True)
class Setting:
    """One setting: its default and what it may be (a range for numbers, choices for text)."""

    default: bool | int | str
    low: int = 0  # numbers only
    high: int = 0
    choices: tuple[str, ...] = ()

    def check(self, name: str, value: Any) -> bool | int | str:
        if isinstance(self.default, bool):
            if not isinstance(value, bool):
                raise invalid(f"expected {name} to be true or false; got {value!r:.40}")
            return value
        if isinstance(self.default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise invalid(f"expected {name} to be a whole number; got {value!r:.40}")
            if not self.low <= value <= self.high:
                raise invalid(f"expected {name} {self.low}-{self.high}; got {value}")
            return value
        if value not in self.choices:
            raise invalid(f"expected {name} one of {', '.join(self.choices)}; got {value!r:.40}")
        return str(value)


# UI-CONTRACT §7's table: defaults and ranges as the old backend's AppSettings had them.
SETTINGS: dict[str, Setting] = {
    "theme": Setting("auto", choices=("light", "dark", "auto")),
    "editor_font_size": Setting(14, 10, 24),
    "default_query_limit": Setting(1000, 10, 10000),
    "default_query_timeout": Setting(30, 5, 300),
    "auto_format_on_paste": Setting(False),
    "query_history_retention_days": Setting(30, 1, 365),
    "editor_tab_size": Setting(2, 2, 8),
    "editor_word_wrap": Setting(True),
    "editor_auto_complete": Setting(True),
    "editor_snippets_enabled": Setting(True),
    "default_db_type": Setting("postgresql", choices=("postgresql", "mysql", "sqlite")),
    "connection_timeout": Setting(10, 5, 60),
    "auto_reconnect": Setting(True),
}


def defaults() -> dict[str, Any]:
    return {name: setting.default for name, setting in SETTINGS.items()}


def effective(document: Document) -> dict[str, Any]:
    """The whole object: stored values that are still valid, defaults for the rest."""
    values = defaults()
    stored = document.get("values")
    for name, value in (stored if isinstance(stored, dict) else {}).items():
        if name in SETTINGS:
            try:
                values[name] = SETTINGS[name].check(name, value)
            except ApiError:  # a hand-edited bad value: its default, not a broken page
                continue
    return values


def changes_of(body: dict[str, Any]) -> dict[str, Any]:
    """The settings a PUT body sets, checked; nulls and unknown keys are left out."""
    return {
        name: SETTINGS[name].check(name, value)
        for name, value in body.items()
        if name in SETTINGS and value is not None
    }


class UiSettings:
    """``settings.json`` as the whole settings object."""

    def __init__(self, data_dir: str) -> None:
        self.store = Store(data_dir, STORE_FILE, initial=lambda: {"values": {}})

    async def get(self) -> dict[str, Any]:
        return effective(await self.store.read())

    async def change(self, changes: dict[str, Any]) -> dict[str, Any]:
        def apply(document: Document) -> dict[str, Any]:
            values = {**effective(document), **changes}
            base = defaults()
            document["values"] = {k: v for k, v in values.items() if v != base[k]}
            return values

        return await self.store.update(apply)

    async def reset(self) -> dict[str, Any]:
        def apply(document: Document) -> dict[str, Any]:
            document["values"] = {}
            return defaults()

        return await self.store.update(apply)


def _settings(request: Request) -> UiSettings:
    settings: UiSettings = request.app.state.ui_settings
    return settings


async def get_settings(request: Request) -> Response:
    return JSONResponse(await _settings(request).get())


async def put_settings(request: Request) -> Response:
    changes = changes_of(await read_object(request))
    values = await _settings(request).change(changes)
    if changes:
        publish(request.app, "settings_changed")
    return JSONResponse(values)


async def reset_settings(request: Request) -> Response:
    values = await _settings(request).reset()
    publish(request.app, "settings_changed")
    return JSONResponse(values)
