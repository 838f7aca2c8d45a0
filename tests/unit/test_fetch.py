"""Every key source fetches its JSON through one HTTPS fetch (servers/fetch.py), against a real
TLS server on loopback that writes its reply the way networks deliver it: in pieces, with pauses,
stalling, too long, not JSON, or cut short. A document that arrives in two writes 300 ms apart
must be read whole (it used to be cut at the first write: every exchange answered 503)."""

from __future__ import annotations

import asyncio
import json
import ssl
import time

import pytest

from bootstrap.core.pki import CA
from bootstrap.core.workload_identity import WorkloadIssuer
from bootstrap.servers.auth import URLJWKS, JWKSUnavailable
from bootstrap.servers.exchange import IssuerKeys
from bootstrap.servers.fetch import FetchError, FetchLimits, JSONFetcher

JWKS = {"keys": [{"kid": "k1", "kty": "EC", "crv": "P-256", "x": "x" * 43, "y": "y" * 43}]}
IDLE = 0.5


class ScriptedServer:
    """An HTTPS server on 127.0.0.1 that answers every request with `script(path)`: a list of bytes
    to write and seconds to pause, written as listed; then the connection is closed."""

    def __init__(self, tmp_path, script):
        ca = CA.create("fetch test CA")
        leaf = ca.issue_cert("localhost", "127.0.0.1", common_name="localhost", usage="server")
        (tmp_path / "ca.pem").write_bytes(ca.cert_pem())
        (tmp_path / "leaf.pem").write_bytes(leaf.cert_pem())
        (tmp_path / "leaf.key").write_bytes(leaf.key_pem())
        self.cafile, self.script, self.requests = tmp_path / "ca.pem", script, []
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf.key")

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()

    def url(self, path: str = "/jwks.json") -> str:
        return f"https://localhost:{self.port}{path}"

    async def _serve(self, reader, writer):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ")[1].decode()
            self.requests.append(path)
            for step in self.script(path):
                if isinstance(step, bytes):
                    writer.write(step)
                    await writer.drain()
                else:
                    await asyncio.sleep(step)
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client gave up, or the test ended
        finally:
            writer.close()


def reply(body: bytes, length: int | None = None) -> bytes:
    """Status line and headers; Content-Length `length` (default: the body's), or none (-1)."""
    length = len(body) if length is None else length
    header = b"" if length < 0 else b"Content-Length: %d\r\n" % length
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n" + header + b"\r\n"


def in_pieces(doc: dict, pause: float = 0.3, pieces: int = 2) -> list:
    body = json.dumps(doc).encode()
    cut = [len(body) * i // pieces for i in range(pieces + 1)]
    steps: list = [reply(body)]
    for start, end in zip(cut, cut[1:]):
        steps += [body[start:end], pause]
    return steps[:-1]


def fetcher(server, **limits) -> JSONFetcher:
    return JSONFetcher((server.cafile,), limits=FetchLimits(**{"idle": IDLE, "total": 5.0, **limits}))


async def fetch(server, **limits) -> dict:
    source = fetcher(server, **limits)
    try:
        return await source.get(server.url())
    finally:
        await source.close()


# --------------------------------------------------------------------------- the key sources


def test_a_jwks_written_in_two_pieces_300ms_apart_is_read_whole(tmp_path):
    async def scenario():
        async with ScriptedServer(tmp_path, lambda path: in_pieces(JWKS)) as server:
            source = URLJWKS(server.url(), server.cafile)
            try:
                assert await source.key_set("k1") == JWKS
            finally:
                await source.close()

    asyncio.run(scenario())


def test_the_exchange_reads_discovery_and_jwks_written_in_pieces(tmp_path):
    issuer = None

    def script(path):
        if path == "/.well-known/openid-configuration":
            return in_pieces({"issuer": issuer.issuer, "jwks_uri": f"{issuer.issuer}/keys"}, pause=0.2, pieces=3)
        return in_pieces(JWKS, pause=0.2, pieces=4)

    async def scenario():
        nonlocal issuer
        async with ScriptedServer(tmp_path, script) as server:
            issuer = WorkloadIssuer("cluster", "kubernetes", f"https://localhost:{server.port}", "temporal-service",
                                    ca_file=str(server.cafile))
            keys = IssuerKeys(issuer)
            try:
                assert await keys.key_set("k1") == JWKS
            finally:
                await keys.close()
            assert server.requests == ["/.well-known/openid-configuration", "/keys"]

    asyncio.run(scenario())


def test_requests_waiting_for_discovery_share_one_fetch(tmp_path):
    """A burst of exchanges before the issuer's keys are known costs one discovery and one JWKS
    fetch (and their memory), not one per request."""
    issuer = None

    def script(path):
        if path == "/.well-known/openid-configuration":
            return in_pieces({"issuer": issuer.issuer, "jwks_uri": f"{issuer.issuer}/keys"})
        return in_pieces(JWKS)

    async def scenario():
        nonlocal issuer
        async with ScriptedServer(tmp_path, script) as server:
            issuer = WorkloadIssuer("cluster", "kubernetes", f"https://localhost:{server.port}", "temporal-service",
                                    ca_file=str(server.cafile))
            keys = IssuerKeys(issuer)
            try:
                assert await asyncio.gather(*(keys.key_set("k1") for _ in range(50))) == [JWKS] * 50
            finally:
                await keys.close()
            assert server.requests == ["/.well-known/openid-configuration", "/keys"]

    asyncio.run(scenario())


def test_a_stalled_refresh_fails_within_the_idle_timeout_and_the_last_good_keys_keep_serving(tmp_path):
    fetches = []

    def script(path):
        fetches.append(path)
        if len(fetches) == 1:
            return in_pieces(JWKS)
        body = json.dumps(JWKS).encode()
        return [reply(body), body[:20], 30.0]

    async def scenario():
        async with ScriptedServer(tmp_path, script) as server:
            source = URLJWKS(server.url(), server.cafile, unknown_every=0,
                             limits=FetchLimits(idle=IDLE, total=20.0))
            try:
                assert await source.key_set("k1") == JWKS
                started = time.monotonic()
                assert await source.key_set("unknown") == JWKS  # the refetch stalls; the last good set answers
                assert time.monotonic() - started < IDLE + 5.0  # well under the stall: the idle timeout ended it (slack for a loaded CI host)
                assert source._failures == 1
                assert await asyncio.wait_for(source.key_set("k1"), 0.1) == JWKS
            finally:
                await source.close()

    asyncio.run(scenario())


def test_a_first_fetch_that_fails_is_unavailable_not_a_crash(tmp_path):
    async def scenario():
        async with ScriptedServer(tmp_path, lambda path: [reply(b"[1, 2]"), b"[1, 2]"]) as server:
            source = URLJWKS(server.url(), server.cafile)
            try:
                with pytest.raises(JWKSUnavailable, match="no key set"):
                    await source.key_set("k1")
            finally:
                await source.close()

    asyncio.run(scenario())


# --------------------------------------------------------------------------- the fetch itself


def test_a_stall_mid_body_fails_within_the_idle_timeout(tmp_path):
    body = json.dumps(JWKS).encode()

    async def scenario():
        async with ScriptedServer(tmp_path, lambda path: [reply(body), body[:10], 30.0]) as server:
            started = time.monotonic()
            with pytest.raises(FetchError, match=f"no byte for {IDLE:g} s"):
                await fetch(server)
            assert time.monotonic() - started < IDLE + 5.0  # well under the stall: the idle timeout ended it (slack for a loaded CI host)

    asyncio.run(scenario())


def test_a_trickle_that_never_idles_still_ends_at_the_total_timeout(tmp_path):
    body = json.dumps(JWKS).encode()

    async def scenario():
        trickle = [reply(body)] + [step for byte in body for step in (bytes([byte]), 0.1)]
        async with ScriptedServer(tmp_path, lambda path: trickle) as server:
            started = time.monotonic()
            with pytest.raises(FetchError, match="not complete within 1 s"):
                await fetch(server, total=1.0)
            assert time.monotonic() - started < 2.0

    asyncio.run(scenario())


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "until-close"])
def test_a_document_over_the_cap_is_an_error_not_a_truncated_parse(tmp_path, declared):
    doc = {"keys": [], "padding": "x" * 4096}
    body = json.dumps(doc).encode()

    async def scenario():
        async with ScriptedServer(tmp_path, lambda path: [reply(body, None if declared else -1), body]) as server:
            with pytest.raises(FetchError, match="larger than 4000 bytes"):
                await fetch(server, max_bytes=4000)
            assert await fetch(server, max_bytes=len(body)) == doc  # exactly the cap is fine

    asyncio.run(scenario())


@pytest.mark.parametrize("body, message", [
    (b"<html>502 Bad Gateway</html>", "not JSON"),
    (b"[1, 2, 3]", "not a JSON object"),
    (b'"keys"', "not a JSON object"),
    (b"\xff\xfe\x00garbage", "not JSON"),
    (b"[" * 200_000, "not JSON"),
])
def test_a_body_that_is_not_a_json_object_is_refused(tmp_path, body, message):
    async def scenario():
        async with ScriptedServer(tmp_path, lambda path: [reply(body), body]) as server:
            with pytest.raises(FetchError, match=message):
                await fetch(server)

    asyncio.run(scenario())


def test_a_connection_closed_before_the_declared_length_is_an_error(tmp_path):
    body = json.dumps(JWKS).encode()

    async def scenario():
        async with ScriptedServer(tmp_path, lambda path: [reply(body), body[: len(body) // 2]]) as server:
            with pytest.raises(FetchError, match="closed before the document ended"):
                await fetch(server)

    asyncio.run(scenario())


def test_a_non_200_status_and_an_unknown_ca_are_errors(tmp_path):
    async def scenario():
        async with ScriptedServer(tmp_path, lambda path: [b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"]) as server:
            with pytest.raises(FetchError, match="HTTP 404"):
                await fetch(server)
            stranger = JSONFetcher((), limits=FetchLimits(idle=IDLE, total=5.0))
            try:
                with pytest.raises(FetchError, match="certificate verify failed"):
                    await stranger.get(server.url())
            finally:
                await stranger.close()

    asyncio.run(scenario())
