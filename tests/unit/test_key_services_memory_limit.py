"""The JWKS server, the token exchange and the expiry exporter, each run for real (`python -m
bootstrap serve-...`) inside a cgroup memory limit equal to its compose mem_limit (read from
docker-compose.prod.yml, swap included), under 2000 connections that idle and the heaviest
requests each one accepts (request heads of 127 headers of 8 KiB, the parser's limits; bodies at
the exchange's form cap, sent but never finished). While the load is held, a legitimate request
must be answered within 1 s, and the kernel must kill nothing. The peaks are printed."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import resource
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from bootstrap.core.pki import CA
from bootstrap.core.workload_identity import GRANT_TYPE, JWT_TOKEN_TYPE
from bootstrap.servers import MAX_CONNECTIONS
from tests.support.ports import free_port
from tests.support.waits import wait_until
from tests.support.memory_limit import MemoryLimit, compose_memory_limit
from tests.support.bundles import make_bundle

ROOT = Path(__file__).resolve().parents[2]
IDLE_CONNECTIONS = 2000
HEAVY_CONNECTIONS = 1100  # more than a service admits (1024): every slot holds a heavy request
HEADER_LINE = b"X-Pad-%03d: " + b"a" * 8000 + b"\r\n"  # under aiohttp's 8190-byte field limit
CONFIG = ("namespaces: [{name: orders}]\n"
          "workload_identity:\n  issuers:\n"
          "    - {name: cluster, issuer: 'https://kubernetes.default.svc', audience: temporal-service}\n"
          "    - {name: stalled, type: oidc, issuer: '%s', audience: temporal-service, ca_file: '%s'}\n")



@pytest.fixture(scope="module")
def stalled_issuer(tmp_path_factory):
    """An issuer whose discovery document trickles, a byte every 4 s (under the fetch's idle
    timeout): each discovery lasts the fetch's whole 10 s, and every exchange for the issuer waits."""
    directory = tmp_path_factory.mktemp("issuer")
    ca = CA.create("stalled issuer CA")
    leaf = ca.issue_cert("127.0.0.1", common_name="stalled issuer", usage="server")
    (directory / "ca.pem").write_bytes(ca.cert_pem())
    (directory / "leaf.pem").write_bytes(leaf.cert_pem())
    (directory / "leaf.key").write_bytes(leaf.key_pem())
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "leaf.pem", directory / "leaf.key")

    async def trickle(reader, writer):
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
            for _ in range(100):
                await writer.drain()
                await asyncio.sleep(4)
                writer.write(b" ")
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(asyncio.start_server(trickle, "127.0.0.1", 0, ssl=context))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}", directory / "ca.pem"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, stalled_issuer):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 16384), hard))  # this process holds the clients
    bundle = make_bundle(tmp_path_factory.mktemp("memory"), CONFIG % stalled_issuer)
    bundle.stalled_issuer = stalled_issuer[0]
    return bundle


def waiting_exchange(issuer: str) -> bytes:
    """A complete POST /token whose subject token names the stalled issuer: it waits for the
    issuer's keys. (Only iss and kid outlive the token's parse; a padded header would cost CPU
    here, not memory: tests/unit/test_fuzz_tokens.py sends those.)"""
    header = {"alg": "ES256", "kid": "k"}
    token = f"{b64(header)}.{b64({'iss': issuer, 'sub': 's'})}.c2ln"
    form = urllib.parse.urlencode({"grant_type": GRANT_TYPE, "subject_token": token,
                                   "subject_token_type": JWT_TOKEN_TYPE}).encode()
    assert len(form) <= 16 * 1024, len(form)
    return (b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n" % len(form)) + form


def b64(doc) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc, separators=(",", ":")).encode()).rstrip(b"=").decode()


SERVICES = {
    # compose service: (argv after `python -m bootstrap`, TLS?, a legitimate request, its expected status)
    "jwks": (["serve-jwks"], True, b"GET /jwks.json HTTP/1.1\r\nHost: jwks\r\n\r\n", 200),
    "token-exchange": (["serve-exchange"], True, b"GET /healthz HTTP/1.1\r\nHost: exchange\r\n\r\n", 200),
    "expiry-exporter": (["serve-expiry-metrics"], False, b"GET /healthz HTTP/1.1\r\nHost: exporter\r\n\r\n", 200),
}


# A request head just under servers/connections.py's MAX_HEAD (32 KiB), and one of 1 MiB (aiohttp alone
# allows 128 headers of 8190 bytes): both unfinished, held until the header deadline or refused.
FULL_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(HEADER_LINE % i for i in range(3)) + b"X-Last: " + b"a" * 7000
HUGE_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(HEADER_LINE % i for i in range(127))
# The exchange's form cap declared, one byte short sent: the exchange waits for the rest (body_timeout).
FORM_BODY = (b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
             b"Content-Length: 16384\r\n\r\n" + b"subject_token=" + b"a" * (16_383 - 14))
# Requests each service answers, whose replies are never read.
ANSWERED = {
    "jwks": b"GET /jwks.json HTTP/1.1\r\nHost: x\r\n\r\n",
    "token-exchange": (b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                       b"Content-Length: 16384\r\n\r\n" + b"a=" + b"b" * (16_384 - 2)),
    "expiry-exporter": b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
}


def heavy_requests(service: str, bundle) -> list[tuple[bytes, int]]:
    """The heaviest requests, each with how many connections send it: heads at and over the cap,
    unfinished; for the exchange bodies at its form cap, unfinished (held until the body deadline),
    and exchanges waiting for an issuer that never answers; and requests answered, replies unread."""
    heads = [(HUGE_HEAD, HEAVY_CONNECTIONS), (FULL_HEAD, HEAVY_CONNECTIONS), (ANSWERED[service], HEAVY_CONNECTIONS)]
    if service != "token-exchange":
        return heads
    # Last, so the legitimate request comes while they wait (the issuer's fetch gives up after
    # 10 s). A quarter of the slots may wait; a few more than that exercise the cap without
    # spending seconds on handshakes a loaded host might push past the fetch's deadline.
    waiting = MAX_CONNECTIONS // 4 + 64
    return [*heads, (FORM_BODY, HEAVY_CONNECTIONS), (waiting_exchange(bundle.stalled_issuer), waiting)]


class Load:
    def __init__(self, port: int, tls: ssl.SSLContext | None):
        self.port, self.tls, self.writers = port, tls, []

    async def open(self, count: int, payload: bytes = b"", parallel: int = 200) -> int:
        gate = asyncio.Semaphore(parallel)

        async def one():
            async with gate:
                try:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", self.port, ssl=self.tls), 10)
                    if payload:
                        writer.write(payload)
                        await asyncio.wait_for(writer.drain(), 10)
                    self.writers.append(writer)
                    return 1
                except (OSError, asyncio.TimeoutError, ssl.SSLError):
                    return 0  # evicted or refused: the service decides, the test measures

        return sum(await asyncio.gather(*(one() for _ in range(count))))

    def close(self):
        for writer in self.writers:
            writer.transport.abort()


async def timed_request(port: int, tls: ssl.SSLContext | None, request: bytes) -> tuple[int, float]:
    started = time.monotonic()
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=tls), 5)
    writer.write(request)
    status_line = await asyncio.wait_for(reader.readline(), 5)
    elapsed = time.monotonic() - started
    writer.transport.abort()
    return int(status_line.split()[1]), elapsed


def client_tls(bundle) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(bundle.root / "trust" / "ca.pem"))
    context.check_hostname = False  # the leaf names the service, the test dials 127.0.0.1
    return context


@pytest.mark.parametrize("service", list(SERVICES))
def test_the_service_stays_within_its_compose_memory_limit(bundle, tmp_path, service):
    argv, uses_tls, legitimate, expected = SERVICES[service]
    limit, port = compose_memory_limit(service), free_port()
    tls = client_tls(bundle) if uses_tls else None
    log = (tmp_path / f"{service}.log").open("w+")
    command = [sys.executable, "-m", "bootstrap", *argv, "--out", str(bundle.root), "--host", "127.0.0.1",
               "--port", str(port)]
    env = {**os.environ, "BUNDLE_CONFIG": str(bundle.config_path), "PYTHONPATH": str(ROOT)}
    with MemoryLimit(limit) as cgroup:
        process = cgroup.popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            wait_until(lambda: b"serving" in Path(log.name).read_bytes() or process.poll() is not None, 30,
                       f"{service} to start")
            assert process.poll() is None, Path(log.name).read_text()
            idle_peak = 0

            async def scenario():
                nonlocal idle_peak
                load = Load(port, tls)
                try:
                    opened = await load.open(IDLE_CONNECTIONS)
                    idle_peak = cgroup.peak
                    heavy = 0
                    for request, count in heavy_requests(service, bundle):
                        heavy += await load.open(count, request)
                    await asyncio.sleep(1.0)  # the burst is in; what is measured is the load it holds
                    status, seconds = await timed_request(port, tls, legitimate)
                    # The exchanges were still waiting (their discovery gives up at 10 s, and says so).
                    assert b"not complete within" not in Path(log.name).read_bytes()
                    return opened, heavy, status, seconds
                finally:
                    load.close()

            opened, heavy, status, seconds = asyncio.run(scenario())
            print(f"\n{service}: limit {limit >> 20} MiB; {opened} idle connections opened, peak "
                  f"{idle_peak / 2**20:.1f} MiB; {heavy} heavy requests held, peak {cgroup.peak / 2**20:.1f} MiB; "
                  f"legitimate request {status} in {seconds * 1000:.0f} ms; OOM kills {cgroup.oom_kills}")
            assert cgroup.oom_kills == 0 and process.poll() is None, Path(log.name).read_text()[-2000:]
            assert status == expected and seconds < 1.0, (status, seconds)
        finally:
            process.kill()
            process.wait()


def test_at_most_a_quarter_of_the_exchange_slots_wait_for_issuer_keys(tmp_path):
    """A request waiting for an issuer's keys holds its slot (busy connections are not evicted):
    beyond a quarter of the slots, the exchange answers 503 at once instead of waiting."""
    from bootstrap.core.tokens import SigningKey
    from bootstrap.core.workload_identity import WorkloadIdentityConfig, WorkloadIssuer
    from bootstrap.servers.auth import JWKSUnavailable
    from bootstrap.servers.exchange import Exchange, ExchangePolicy, ReloadingKey
    from bootstrap.servers.http import Limits

    issuer = WorkloadIssuer("ci", "oidc", "https://issuer.example", "temporal-service")
    (tmp_path / "signing.key").write_bytes(SigningKey.generate().private_pem())
    policy = ExchangePolicy(WorkloadIdentityConfig(enabled=True, issuers=(issuer,)), ("orders",), "i", "a")
    exchange = Exchange(policy, ReloadingKey(tmp_path / "signing.key"), Limits(max_connections=40))

    class StalledKeys:
        def __init__(self):
            self.released = asyncio.Event()

        async def key_set(self, kid):
            await self.released.wait()
            return {"keys": []}

    async def scenario():
        exchange.keys = {issuer.issuer: StalledKeys()}
        waiting = [asyncio.ensure_future(exchange._issuer_keys(issuer, "k")) for _ in range(15)]
        await asyncio.sleep(0.01)
        refused = [w for w in waiting if w.done() and isinstance(w.exception(), JWKSUnavailable)]
        assert len(refused) == 5 and exchange._waiting == 10
        exchange.keys[issuer.issuer].released.set()
        await asyncio.gather(*waiting, return_exceptions=True)
        assert exchange._waiting == 0

    asyncio.run(scenario())
