"""servers/service.py's error middleware, the one both the codec and the token exchange answer
through: the router's 404 and 405 and a handler's Refusal become the service's own JSON, an
unread body closes the connection, and a bug is a 500 whose log line names the exception's type
and place, never its text."""

from __future__ import annotations

import http.client
import json
import threading

import pytest
from aiohttp import web

from bootstrap.servers.events import Refusal
from bootstrap.servers.http import Limits, reply
from bootstrap.servers.service import ErrorReplies, Service

REPLIES = ErrorReplies(lambda: reply(404, {"error": "nowhere"}),
                       lambda path, allowed: reply(405, {"error": path, "allowed": sorted(allowed)}),
                       lambda refusal: reply(refusal.status, {"error": refusal.message}))


async def refuse(request):
    raise Refusal(403, "no", detail="never in the reply")


async def read_then_refuse(request):
    await request.content.read(request.content_length)
    raise Refusal(400, "bad body")


async def broken(request):
    raise RuntimeError("payload: the secret plaintext")


def app() -> web.Application:
    application = web.Application()
    application.router.add_route("POST", "/refuse", refuse)
    application.router.add_route("POST", "/read", read_then_refuse)
    application.router.add_route("GET", "/boom", broken)
    return application


@pytest.fixture(params=[REPLIES, None], ids=["replies", "aiohttp"])
def served(request):
    server = Service(app(), "127.0.0.1", 0, None, Limits(), request.param)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], request.param
    server.shutdown()
    server.server_close()


def call(port, method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


def test_the_router_s_404_and_405_are_the_service_s_json(served):
    port, replies = served
    response, data = call(port, "GET", "/nothing/here", b"unread")
    assert response.status == 404
    if replies is None:  # a service without replies keeps aiohttp's answers (the expiry exporter's)
        assert response.getheader("Content-Type").startswith("text/plain")
        return
    assert json.loads(data) == {"error": "nowhere"} and response.will_close
    response, data = call(port, "GET", "/refuse")
    assert (response.status, json.loads(data)) == (405, {"error": "/refuse", "allowed": ["POST"]})
    assert not response.will_close  # no body, nothing to drain


@pytest.mark.parametrize("path,body,answer,closes", [
    ("/refuse", None, (403, {"error": "no"}), False),
    ("/refuse", b"x" * 100, (403, {"error": "no"}), True),
    ("/read", b"x" * 100, (400, {"error": "bad body"}), False),
])
def test_a_refusal_closes_the_connection_only_over_an_unread_body(served, path, body, answer, closes):
    port, replies = served
    response, data = call(port, "POST", path, body)
    if replies is None:
        assert response.status == 500  # a Refusal is for a service with replies to answer
        return
    assert ((response.status, json.loads(data)), response.will_close) == (answer, closes)


def test_a_bug_is_a_500_whose_log_line_holds_no_text_of_the_exception(served, capfd):
    port, _ = served
    response, data = call(port, "GET", "/boom")
    assert (response.status, json.loads(data), response.will_close) == (500, {"error": "internal error"}, True)
    log = capfd.readouterr().err
    [event] = [json.loads(line) for line in log.splitlines() if '"internal-error"' in line]
    raised_at = f"{__name__.rsplit('.', 1)[-1]}.py:{broken.__code__.co_firstlineno + 1}"
    assert (event["error"], event["path"], event["at"]) == ("RuntimeError", "/boom", raised_at)
    assert "secret" not in log and "Traceback" not in log
