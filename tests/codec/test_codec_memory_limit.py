"""The codec server inside the memory its container really has (docker-compose.prod.yml's
mem_limit for codec-server, as a cgroup: swap included), started as compose starts it
(`python -m bootstrap serve-codec`, TLS on), under the worst body shapes and connection counts
the limits allow. No shape may get the process OOM-killed, none may get a 5xx, and a legitimate
decode must still be answered within a second while each attack runs. Afterwards the log must
hold no payload, token or key material."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import os
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from bootstrap.cli import main
from bootstrap.core.codec import encrypt
from bootstrap.core.codec_keys import KeySet
from bootstrap.servers.codec import MAX_BODY, MAX_CONNECTIONS
from bootstrap.servers.connections import MAX_HEAD
from tests.support.codec import bundle_keys
from tests.support.ports import free_port
from tests.support.waits import wait_until
from tests.support.memory_limit import MemoryLimit, compose_memory_limit

SECRET = b'"codec-memory-secret 4111-1111-1111-1111"'
PLAIN = Payload(metadata={"encoding": b"json/plain"}, data=SECRET)
CONFIG = textwrap.dedent("""\
    namespaces: [{name: orders}]
    roles:
      system: {permissions: ["temporal-system:admin"]}
      worker: {permissions: ["orders:write"]}
      client: {permissions: ["orders:write"]}
      mixed: {permissions: ["orders:admin"]}
      lowest: {permissions: ["orders:read"]}
      %s
    persistence: {driver: sqlite, sqlite_path: /tmp/unused-codec-memory.db}
    """)
# One token may hold an eighth of the connections inside requests (429 beyond): the worst cases take
# eight tokens of the lowest role, spread round-robin, so every connection can still be held.
ATTACKERS = ("lowest", *(f"reader{n}" for n in range(2, 9)))
CONFIG %= "\n  ".join(f'{role}: {{permissions: ["orders:read"]}}' for role in ATTACKERS[1:])


def attacker(index: int) -> str:
    return ATTACKERS[index % len(ATTACKERS)]



# --------------------------------------------------------------------------- the server


class Codec:
    def __init__(self, out: Path, log: Path, port: int, cgroup: MemoryLimit, process):
        self.out, self.log, self.port, self.cgroup, self.process = out, log, port, cgroup, process
        self.context = ssl.create_default_context(cafile=str(out / "trust/ca.pem"))

    def token(self, role: str) -> str:
        return (self.out / "tokens" / f"{role}.jwt").read_text().strip()

    def headers(self, role: str, namespace: str = "orders") -> dict:
        return {"Authorization": f"Bearer {self.token(role)}", "X-Namespace": namespace,
                "Content-Type": "application/json"}

    def post(self, path: str, body: bytes, headers: dict, timeout: float = 60) -> int | None:
        """The status, or None when the connection broke (a crashed or OOM-killed server)."""
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context, timeout=timeout)
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            return response.status
        except (OSError, http.client.HTTPException):
            return None
        finally:
            conn.close()

    def open_files(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def reset_peak(self) -> None:
        (self.cgroup.path / "memory.max_usage_in_bytes").write_text("0")

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def keyset(out: Path) -> KeySet:
    return bundle_keys(out)


@pytest.fixture(scope="module")
def codec(tmp_path_factory):
    root = tmp_path_factory.mktemp("codec-memory")
    config, out, log, port = root / "bundle.yaml", root / "out", root / "codec.log", free_port()
    config.write_text(CONFIG)
    assert main(["init", "--config", str(config), "--out", str(out), "-q"]) == 0
    limit = compose_memory_limit("codec-server")
    with MemoryLimit(limit) as cgroup, open(log, "wb") as sink:
        process = cgroup.popen([sys.executable, "-m", "bootstrap", "serve-codec", "--config", str(config),
                                "--out", str(out), "--host", "127.0.0.1", "--port", str(port)],
                               stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        served = Codec(out, log, port, cgroup, process)
        wait_until(lambda: _healthy(served), 60, "serve-codec health")
        served.files_at_rest = served.open_files()
        print(f"\ncodec-server limit {limit >> 20} MiB, idle {cgroup.usage / 2**20:.0f} MiB")
        try:
            yield served
        finally:
            process.terminate()
            with contextlib.suppress(Exception):
                process.wait(10)
            assert cgroup.oom_kills == 0, f"{cgroup.oom_kills} OOM kill(s)"


def _healthy(codec: Codec) -> bool:
    with contextlib.suppress(OSError, http.client.HTTPException):
        conn = http.client.HTTPSConnection("127.0.0.1", codec.port, context=codec.context, timeout=2)
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    return False


def legitimate_decode(codec: Codec) -> float:
    """An orders admin decodes one of its payloads; returns the latency (inf when it failed)."""
    sealed = encrypt(PLAIN, keyset(codec.out), "orders")
    body = json_format.MessageToJson(Payloads(payloads=[sealed])).encode()
    started = time.monotonic()
    conn = http.client.HTTPSConnection("127.0.0.1", codec.port, context=codec.context, timeout=5)
    try:
        conn.request("POST", "/decode", body=body, headers=codec.headers("mixed"))
        response = conn.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException) as exc:
        print(f"legitimate decode failed: {exc!r}")
        return float("inf")
    finally:
        conn.close()
    elapsed = time.monotonic() - started
    decoded = list(json_format.Parse(data, Payloads()).payloads) if response.status == 200 else None
    return elapsed if decoded == [PLAIN] else float("inf")


def under_attack(codec: Codec, attack) -> tuple[object, list[float], int]:
    """Runs attack() while a legitimate client decodes every 0.2 s; returns the attack's result,
    the legitimate latencies and the cgroup's peak during the attack."""
    # The last attack's connections are gone (the server closes them asynchronously).
    wait_until(lambda: codec.open_files() < codec.files_at_rest + 8, 60, "the last attack's connections to close")
    codec.reset_peak()
    latencies, done = [], threading.Event()

    def probe():
        while not done.is_set():
            latencies.append(legitimate_decode(codec))
            done.wait(0.2)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        result = attack()
    finally:
        done.set()
        prober.join(10)
    return result, latencies, codec.cgroup.peak


def assert_not_starved(latencies: list[float], hold: float) -> None:
    """A legitimate decode starved by connections held `hold` seconds would wait out the hold. Half
    of it leaves room for the attackers' TLS handshakes, made in this test's own interpreter (one
    CI run saw a decode take 1.18 s beside 2000 of them)."""
    assert latencies and max(latencies) < hold / 2, latencies


def concurrently(count: int, send) -> list:
    """send(index) for each index at once, in threads; their results in order."""
    results = [None] * count

    def one(index):
        results[index] = send(index)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


# --------------------------------------------------------------------------- the shapes


def _fill(prefix: bytes, unit: bytes, suffix: bytes, size: int = MAX_BODY) -> bytes:
    count = (size - len(prefix) - len(suffix)) // len(unit)
    return prefix + unit * count + suffix


def _distinct_strings(size: int = MAX_BODY) -> bytes:
    parts, total, index = [], 0, 0
    while total < size - 64:
        part = b'"%x",' % index
        parts.append(part)
        total, index = total + len(part), index + 1
    return b'{"x":[' + b"".join(parts) + b'""],"payloads":[]}'


def _distinct_keys(size: int = MAX_BODY) -> bytes:
    parts, total, index = [], 0, 0
    while total < size - 64:
        part = b'"%x":0,' % index
        parts.append(part)
        total, index = total + len(part), index + 1
    return b'{"x":{' + b"".join(parts) + b'"":0},"payloads":[]}'


def _big_payload(alphabet: str = "standard", extra: bytes = b"") -> bytes:
    raw = os.urandom((MAX_BODY - 200) * 3 // 4)
    if alphabet == "standard":
        data = base64.b64encode(raw)
    else:
        data = base64.urlsafe_b64encode(raw).rstrip(b"=")
    return b'{"payloads":[{"metadata":{"encoding":"YmluYXJ5L3BsYWlu"},"data":"' + data + extra + b'"}]}'


SHAPES = {
    # name: (body, concurrent copies, statuses allowed)
    "empty arrays": (lambda: _fill(b'{"x":[', b"[],", b'[]],"payloads":[]}'), 4, {413}),
    "empty arrays as payloads": (lambda: _fill(b'{"payloads":[', b"[],", b"[]]}"), 4, {400, 413}),
    "empty objects": (lambda: _fill(b'{"x":[', b"{},", b'{}],"payloads":[]}'), 4, {413}),
    "empty payloads": (lambda: _fill(b'{"payloads":[', b"{},", b"{}]}"), 4, {413}),
    "nulls and zeros": (lambda: _fill(b'{"x":[', b"0,null,", b'0],"payloads":[]}'), 4, {413}),
    "deep nesting": (lambda: b"[" * (MAX_BODY // 2) + b"]" * (MAX_BODY // 2), 4, {400, 413}),
    "30k nested arrays": (lambda: b"[" * 30_000 + b"]" * 30_000, 4, {400, 413}),
    "tiny strings": (_distinct_strings, 4, {413}),
    "tiny keys": (_distinct_keys, 4, {413}),
    "max base64": (_big_payload, 4, {200}),
    "max urlsafe base64": (lambda: _big_payload("urlsafe"), 4, {200}),
    "max base64, one non-ASCII character": (lambda: _big_payload(extra="é".encode()), 4, {400, 413}),
    "many concurrent max bodies": (_big_payload, 12, {200, 503}),
    # Small bodies have their own budget and are parsed on the event loop: the densest that pass.
    "small bodies of empty arrays": (lambda: _fill(b'{"x":[', b"[],", b'[]],"payloads":[]}', 60 * 1024), 64, {200}),
    "small bodies of tiny strings": (lambda: _distinct_strings(60 * 1024), 64, {200}),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_the_worst_body_shapes_fit_the_containers_memory(codec, shape):
    make, copies, allowed = SHAPES[shape]
    body = make()
    assert len(body) <= MAX_BODY
    statuses, latencies, peak = under_attack(
        codec, lambda: concurrently(copies, lambda i: codec.post("/decode", body, codec.headers(attacker(i)))))
    print(f"{shape}: {copies} x {len(body) / 2**20:.1f} MiB -> {sorted(set(map(str, statuses)))}, "
          f"peak {peak / 2**20:.0f} MiB of {codec.cgroup.limit >> 20}, "
          f"slowest legitimate decode {max(latencies) * 1000:.0f} ms ({len(latencies)})")
    assert codec.cgroup.oom_kills == 0 and codec.process.poll() is None
    assert set(statuses) <= allowed, statuses
    assert latencies and max(latencies) < 1.0, latencies


def test_maximal_batches_decrypted_and_encrypted_fit_too(codec):
    """The paths that do real work: an admin decrypting, a writer encrypting, maximal bodies."""
    plain = Payload(metadata={"encoding": b"binary/plain"}, data=os.urandom((MAX_BODY - 400) * 3 // 4 - 64))
    sealed = json_format.MessageToJson(Payloads(payloads=[encrypt(plain, keyset(codec.out), "orders")])).encode()
    clear = json_format.MessageToJson(Payloads(payloads=[plain])).encode()
    assert len(sealed) <= MAX_BODY and len(clear) <= MAX_BODY

    def send(index):
        path, body = ("/decode", sealed) if index % 2 else ("/encode", clear)
        return codec.post(path, body, codec.headers("mixed"))

    statuses, latencies, peak = under_attack(codec, lambda: concurrently(6, send))
    print(f"6 x {len(sealed) / 2**20:.1f} MiB decrypted/encrypted: {sorted(set(map(str, statuses)))}, "
          f"peak {peak / 2**20:.0f} MiB, slowest legitimate decode {max(latencies) * 1000:.0f} ms")
    assert statuses == [200] * 6 and codec.cgroup.oom_kills == 0
    assert latencies and max(latencies) < 1.0, latencies


async def _idle_tls_connections(codec: Codec, count: int, hold: float) -> int:
    gate = asyncio.Semaphore(100)

    async def one():
        async with gate:
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                return (await asyncio.wait_for(asyncio.open_connection(
                    "127.0.0.1", codec.port, ssl=codec.context, server_hostname="localhost"), 20))[1]

    writers = [w for w in await asyncio.gather(*(one() for _ in range(count))) if w is not None]
    await asyncio.sleep(hold)
    for writer in writers:
        writer.close()
    return len(writers)


async def _waiting_requests(codec: Codec, count: int, head: int, hold: float) -> int:
    """`count` connections each send a request with a valid token, a head of `head` bytes and the
    start of a maximal body, which then stalls (the body budget is taken by the first)."""
    gate = asyncio.Semaphore(100)

    def request(index: int) -> bytes:
        auth = "".join(f"{k}: {v}\r\n" for k, v in codec.headers(attacker(index)).items())
        start = f"POST /decode HTTP/1.1\r\nHost: localhost\r\nContent-Length: {MAX_BODY}\r\n{auth}"
        filler = "".join(f"X-Filler-{i}: {'f' * 4000}\r\n" for i in range(max(0, head - len(start)) // 4020))
        return (start + filler + "\r\n").encode() + b"[" * (256 * 1024)

    async def one(index):
        async with gate:
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                _, writer = await asyncio.wait_for(asyncio.open_connection(
                    "127.0.0.1", codec.port, ssl=codec.context, server_hostname="localhost"), 20)
                writer.write(request(index))
                return writer

    writers = [w for w in await asyncio.gather(*(one(i) for i in range(count))) if w is not None]
    await asyncio.sleep(hold)
    alive = sum(1 for w in writers if not w.is_closing())
    for writer in writers:
        writer.close()
    return alive


def test_every_connection_waiting_with_a_full_head_and_a_stalled_body(codec):
    hold = 6.0
    alive, latencies, peak = under_attack(
        codec, lambda: asyncio.run(_waiting_requests(codec, MAX_CONNECTIONS - 8, MAX_HEAD - 1024, hold)))
    print(f"{MAX_CONNECTIONS - 8} waiting requests with {MAX_HEAD - 1024} byte heads: peak {peak / 2**20:.0f} MiB, "
          f"slowest legitimate decode {max(latencies) * 1000:.0f} ms")
    assert codec.cgroup.oom_kills == 0 and codec.process.poll() is None
    assert_not_starved(latencies, hold)


def test_heads_beyond_the_limit_are_cut_off(codec):
    """1 MB of headers on half the connections (a full house would make the legitimate client's
    connection the oldest idle one, which the guard evicts by design)."""
    count, hold = MAX_CONNECTIONS // 2, 4.0
    alive, latencies, peak = under_attack(
        codec, lambda: asyncio.run(_waiting_requests(codec, count, 1024 * 1024, hold)))
    print(f"{count} connections sending 1 MB heads: {alive} left open, peak {peak / 2**20:.0f} MiB")
    assert alive == 0 and codec.cgroup.oom_kills == 0
    assert_not_starved(latencies, hold)


def test_pipelined_requests_are_cut_off(codec):
    """aiohttp would queue 32 parsed requests a connection, each with its head."""
    raw = socket.create_connection(("127.0.0.1", codec.port), timeout=5)
    with codec.context.wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n" * 40)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
    assert answer.count(b"HTTP/1.1 200") <= 2, answer  # then closed, not 40 answers
    wait_until(lambda: "requests pipelined" in codec.text(), 5, "the 431 audit line")


def test_two_thousand_idle_tls_connections_and_a_maximal_batch(codec):
    body, hold = _big_payload(), 6.0

    def attack():
        idle = threading.Thread(target=lambda: asyncio.run(_idle_tls_connections(codec, 2000, hold)))
        idle.start()
        time.sleep(3.0)  # most of them open
        status = codec.post("/decode", body, codec.headers("lowest"))
        idle.join(60)
        return status

    status, latencies, peak = under_attack(codec, attack)
    print(f"2000 idle TLS connections + one {len(body) / 2**20:.1f} MiB batch: {status}, "
          f"peak {peak / 2**20:.0f} MiB, slowest legitimate decode {max(latencies) * 1000:.0f} ms")
    assert status == 200 and codec.cgroup.oom_kills == 0
    assert_not_starved(latencies, hold)


# --------------------------------------------------------------------------- smaller findings


def test_encode_for_a_namespace_without_data_keys_is_a_4xx(codec):
    body = json_format.MessageToJson(Payloads(payloads=[PLAIN])).encode()
    assert codec.post("/encode", body, codec.headers("system", "no-keys-here")) == 400


def test_http_1_0_without_content_length_is_refused_and_logs_no_body(codec):
    """Without Content-Length the body lands where the parser expects the next request line."""
    body = json_format.MessageToJson(Payloads(payloads=[PLAIN])).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in codec.headers("mixed").items())
    raw = socket.create_connection(("127.0.0.1", codec.port), timeout=5)
    with codec.context.wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(f"POST /encode HTTP/1.0\r\nHost: localhost\r\n{head}\r\n".encode() + body)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(4096):
                answer += chunk
    assert answer.split(b" ", 2)[1] in (b"400", b"411"), answer
    time.sleep(0.5)  # the audit lines of anything the server parsed after it
    log = codec.text()
    assert base64.b64encode(SECRET).decode() not in log and "metadata" not in log


# --------------------------------------------------------------------------- the log, last


def test_the_log_holds_no_payload_token_or_key(codec):
    """After the attacks above (pytest keeps a module's order), and a decode and an encode of the
    secret of its own, so that it can fail when run alone."""
    assert legitimate_decode(codec) < 1.0
    body = json_format.MessageToJson(Payloads(payloads=[PLAIN])).encode()
    assert codec.post("/encode", body, codec.headers("mixed")) == 200
    log = codec.text()
    assert '"outcome":"decrypted"' in log and '"outcome":"encrypted"' in log  # the right log
    secrets = {"plaintext": SECRET.decode().strip('"')}
    for alphabet, encode in (("standard", base64.b64encode), ("urlsafe", base64.urlsafe_b64encode)):
        secrets[f"plaintext ({alphabet} base64)"] = encode(SECRET).decode().rstrip("=")
    for role in ("system", "mixed", "lowest"):
        token = codec.token(role)
        secrets[f"{role} token"] = token
        secrets[f"{role} token signature"] = token.rsplit(".", 1)[1]
    keys = {f"data key {key_id}": key for ring in keyset(codec.out).rings.values() for key_id, key in ring.keys.items()}
    keys.update({f"KEK {p.name}": p.read_bytes() for p in (codec.out / "codec-kek").iterdir()})
    for name, key in keys.items():
        for alphabet, encode in (("standard", base64.b64encode), ("urlsafe", base64.urlsafe_b64encode)):
            secrets[f"{name} ({alphabet})"] = encode(key).decode().rstrip("=")
        secrets[f"{name} (hex)"] = key.hex()
    key_pem = (codec.out / "codec/server.key").read_text()
    secrets["TLS key"] = "".join(key_pem.strip().splitlines()[1:-1])[:64]
    found = [name for name, secret in secrets.items() if secret and secret in log]
    assert found == [], found
