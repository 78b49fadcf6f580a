"""``Streams``: counting open sockets and closing them all on the worker's stop order."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from dbtkd.app.streams import GOING_AWAY, SERVICE_RESTART, Streams
from tests.app.asgi_calls import WebSocketClient, open_websocket, websocket_scope

pytestmark = pytest.mark.anyio


def demo_app(streams: Streams, body: Callable[[WebSocket], Awaitable[None]]) -> Starlette:
    async def endpoint(websocket: WebSocket) -> None:
        await streams.serve("demo", websocket, body)

    return Starlette(routes=[WebSocketRoute("/ws/demo", endpoint)])


async def say_hello_then_wait(websocket: WebSocket) -> None:
    await websocket.send_json({"type": "hello"})
    await anyio.sleep_forever()


async def expect_accept_and_hello(client: WebSocketClient) -> None:
    assert (await client.receive())["type"] == "websocket.accept"
    assert await client.receive_json() == {"type": "hello"}


async def test_known_streams_are_counted_from_zero() -> None:
    assert Streams(["logs", "backups"]).counts() == {"logs": 0, "backups": 0}


@pytest.mark.parametrize("code", [SERVICE_RESTART, GOING_AWAY])
async def test_close_all_closes_every_open_stream_with_the_given_code(code: int) -> None:
    streams = Streams(["demo"])
    app = demo_app(streams, say_hello_then_wait)
    scope = websocket_scope("/ws/demo")
    async with open_websocket(app, scope) as first, open_websocket(app, scope) as second:
        await expect_accept_and_hello(first)
        await expect_accept_and_hello(second)
        assert streams.counts() == {"demo": 2}
        with anyio.fail_after(5):
            await streams.close_all(code)
        for client in (first, second):
            message = await client.receive()
            assert message["type"] == "websocket.close"
            assert message["code"] == code
        assert streams.counts() == {"demo": 0}


async def test_stream_opened_after_close_all_is_accepted_then_closed_with_that_code() -> None:
    streams = Streams(["demo"])
    await streams.close_all(SERVICE_RESTART)
    app = demo_app(streams, say_hello_then_wait)
    async with open_websocket(app, websocket_scope("/ws/demo")) as client:
        assert (await client.receive())["type"] == "websocket.accept"
        message = await client.receive()
        assert (message["type"], message["code"]) == ("websocket.close", SERVICE_RESTART)


async def test_close_all_with_no_open_streams_returns_at_once() -> None:
    with anyio.fail_after(1):
        await Streams(["demo"]).close_all(GOING_AWAY)


@pytest.mark.parametrize("code", [999, 1005, 1006, 1015, 5000])
async def test_close_all_refuses_codes_a_server_may_not_send(code: int) -> None:
    with pytest.raises(ValueError, match=f"got {code}"):
        await Streams().close_all(code)


async def test_client_leaving_unregisters_its_stream() -> None:
    streams = Streams(["demo"])
    app = demo_app(streams, say_hello_then_wait)
    async with open_websocket(app, websocket_scope("/ws/demo")) as client:
        await expect_accept_and_hello(client)
        assert streams.count("demo") == 1
    assert streams.count("demo") == 0


async def test_stream_whose_body_ends_is_closed_normally() -> None:
    async def say_hello(websocket: WebSocket) -> None:
        await websocket.send_json({"type": "hello"})

    streams = Streams(["demo"])
    async with open_websocket(demo_app(streams, say_hello), websocket_scope("/ws/demo")) as client:
        await expect_accept_and_hello(client)
        message = await client.receive()
        assert (message["type"], message["code"]) == ("websocket.close", 1000)
    assert streams.count("demo") == 0


async def test_messages_from_the_client_are_ignored_not_fatal() -> None:
    streams = Streams(["demo"])
    app = demo_app(streams, say_hello_then_wait)
    async with open_websocket(app, websocket_scope("/ws/demo")) as client:
        await expect_accept_and_hello(client)
        await client.send_text("unexpected")
        await client.assert_silent(0.1)
        assert streams.count("demo") == 1
