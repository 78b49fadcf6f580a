"""Routes for saved connections: list, create, read, edit, delete, test, connect, disconnect.

``GET/POST /api/v1/connections``, ``GET/PUT/DELETE /api/v1/connections/{id}``,
``POST /api/v1/connections/test``, ``POST /api/v1/connections/{id}/connect`` and
``/disconnect``. A connection is shown as ``{id, name, db_type, host, port, database, username,
has_password}``: the password goes in (POST, PUT, test) and never comes out; on PUT a missing
or empty password keeps the saved one (the UI's form never has it). Testing reports the
database's answer as ``{success, message, server_version, error}`` with HTTP 200 either way,
the reason in ``message`` too (the UI shows only that). Connecting that fails is HTTP 400 with
the reason in ``detail`` (UI-CONTRACT D1: the UI treats only a thrown error as a failure).
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from dbtkd.app.db.engine import CONNECT_TIMEOUT, DatabaseError
from dbtkd.app.db.profiles import Profile, ProfileNotFoundError, build_profile
from dbtkd.app.db.sessions import engine_class
from dbtkd.app.endpoints import ApiError, JSONResponse, database_of, read_object
from dbtkd.app.events import publish

log = logging.getLogger("dbtkd.app.db")


def _outcome(success: bool, message: str, version: str | None, error: str | None) -> Response:
    # The UI's test toast shows `message` only (UI-CONTRACT §2.5): the reason goes in it too.
    shown = f"{message}: {error}" if error else message
    return JSONResponse(
        {"success": success, "message": shown, "server_version": version, "error": error}
    )


async def list_connections(request: Request) -> Response:
    profiles = database_of(request).profiles
    return JSONResponse([profile.public_view() for profile in await profiles.all()])


async def create_connection(request: Request) -> Response:
    profiles = database_of(request).profiles
    profile = build_profile(await read_object(request))
    await profiles.save(profile)
    log.info("saved connection %s (%s)", profile.id, profile.db_type)
    publish(request.app, "connection_created", id=profile.id)
    return JSONResponse(profile.public_view(), status_code=201)


async def get_connection(request: Request) -> Response:
    profiles = database_of(request).profiles
    profile = await profiles.get(request.path_params["id"])
    return JSONResponse(profile.public_view())


async def update_connection(request: Request) -> Response:
    database = database_of(request)
    profiles, sessions = database.profiles, database.sessions
    # Merged over the saved profile inside the store's lock: an edit made meanwhile (in
    # another window) is kept, and a connection deleted meanwhile stays deleted (404).
    profile = await profiles.edit(request.path_params["id"], await read_object(request))
    # Open connections were made with the old settings (host, password...).
    await sessions.disconnect(profile.id)
    publish(request.app, "connection_updated", id=profile.id)
    return JSONResponse(profile.public_view())


async def delete_connection(request: Request) -> Response:
    database = database_of(request)
    profiles, sessions = database.profiles, database.sessions
    profile_id = request.path_params["id"]
    await profiles.delete(profile_id)
    await sessions.disconnect(profile_id)
    await database.history.clear(profile_id)
    log.info("deleted connection %s", profile_id)
    publish(request.app, "connection_deleted", id=profile_id)
    return JSONResponse({"success": True, "id": profile_id})


async def test_connection(request: Request) -> Response:
    profiles = database_of(request).profiles
    body = await read_object(request)
    existing = None
    if isinstance(body.get("id"), str):
        # Testing an edited saved connection: the UI does not have its password to send.
        try:
            existing = await profiles.get(body["id"])
        except ProfileNotFoundError:
            existing = None
    profile = build_profile(body, existing)
    return await _try_connection(profile)


async def connect(request: Request) -> Response:
    database = database_of(request)
    profiles, sessions = database.profiles, database.sessions
    profile = await profiles.get(request.path_params["id"])
    try:
        version = await sessions.connect(profile, wait=CONNECT_TIMEOUT)
    except DatabaseError as error:
        # D1: a failed connect is an HTTP error, so no screen says "Connected".
        raise ApiError(400, "connect_failed", error.message) from None
    return _outcome(True, "connected", version, None)


async def disconnect(request: Request) -> Response:
    database = database_of(request)
    profiles, sessions = database.profiles, database.sessions
    profile = await profiles.get(request.path_params["id"])
    was_open = await sessions.disconnect(profile.id)
    return JSONResponse(
        {"success": True, "message": "disconnected" if was_open else "was not connected"}
    )


async def _try_connection(profile: Profile) -> Response:
    """Open a throwaway connection with ``profile``, ask its version, close it."""
    try:
        engine = await engine_class(profile.db_type).open(profile, "test")
    except DatabaseError as error:
        return _outcome(False, "connection failed", None, error.message)
    try:
        version: Any = await engine.server_version()
    except DatabaseError as error:
        return _outcome(False, "connected, but the server did not answer", None, error.message)
    finally:
        await engine.close()
    return _outcome(True, "connection succeeded", version, None)
