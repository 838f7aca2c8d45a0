"""What the UI gate may hold, by construction: message sizes, time limits, and the memory plan
(GateBudget) that turns the container's memory limit into message slots."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .front import RELAY_BYTES

MIB = 1024 * 1024
# The frontend's own limit. Temporal v1.32.2 (the release compose pins) builds the frontend's server
# from GetFrontendGRPCServerOptions (common/rpc/rpc.go: credentials only) plus keepalive and
# interceptors (service/frontend/fx.go): no grpc.MaxRecvMsgSize, so grpc-go's default applies,
# defaultServerMaxReceiveMessageSize = 4 MiB (google.golang.org/grpc v1.83.2, server.go, the version
# its go.mod pins). The same file's MaxHTTPAPIRequestBytes says so too ("the max gRPC request size").
# A larger request would be refused there anyway.
MAX_REQUEST_BYTES = 4 * MIB
# Answers are capped alike: the frontend sends up to 2 GiB and the UI takes 64 MiB, so a cap is ours
# to choose, and every byte of it is multiplied by the calls in flight (GateBudget).
MAX_RESPONSE_BYTES = 4 * MIB
# A caller that opened a call has this long to send its body, and to take the answer.
BODY_SECONDS = 10.0


# The memory a gate costs at worst, in parts that are each bounded by construction.
# (Measured in tests/server/test_ui_gate_memory.py, charged to the gate's cgroup as compose's limit is.)
BASELINE_BYTES = 56 * MIB  # the interpreter with grpc, temporalio's protos, jwt, aiohttp: 40-49 MiB measured
# An idle TLS HTTP/2 connection (measured: ~62 KB of TLS and HTTP/2 state), and the front's relay of it.
PER_CONNECTION_BYTES = 64 * 1024 + RELAY_BYTES
PER_CALL_BYTES = 32 * 1024  # an admitted call without its body: its metadata (at most 16 KiB), task, core state
# A slot carries one call's messages, each up to three times at once: the request as read by gRPC,
# as bytes here, as sent on; the answer alike (measured: ~20 MiB a slot of 4 MiB requests).
SLOT_BYTES = 3 * (MAX_REQUEST_BYTES + MAX_RESPONSE_BYTES)
HEADROOM = 0.15  # of the container's memory, left unplanned (allocator fragmentation, page cache)
# Connections beyond this are closed as they come. Only the UI server (one connection, multiplexed)
# and the health check call the gate; this is a memory bound, not a share.
MAX_CONNECTIONS = 32
# One peer address holds at most this many of them (the front), so a certificate holder opening
# all it can leaves the UI room to reconnect; the UI needs one, a health check one more.
PEER_CONNECTIONS = MAX_CONNECTIONS // 4
# Streams a connection may have open; the UI server (grpc-go) queues its further calls itself.
STREAMS_PER_CONNECTION = 16
# Calls gRPC holds before the gate's loop takes them, first come first served: all the streams the
# connections may have open, so none is shed (gRPC sheds at random, the UI's as well, past its
# default of 1000) and the UI's call waits behind at most this many refusals (slowest UI call
# under a flood on every connection: 0.14-0.36 s measured).
PENDING_CALLS = MAX_CONNECTIONS * STREAMS_PER_CONNECTION
DEFAULT_MEMORY = 256 * MIB  # compose's mem_limit, assumed where no limit can be read
UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a number near 2**63


@dataclass(frozen=True)
class GateBudget:
    """memory >= BASELINE + connections x PER_CONNECTION + calls x PER_CALL + slots x SLOT (+ HEADROOM)."""

    memory: int
    calls: int
    connections: int = MAX_CONNECTIONS

    @property
    def slots(self) -> int:
        planned = int(self.memory * (1 - HEADROOM))
        fixed = BASELINE_BYTES + self.connections * PER_CONNECTION_BYTES + self.calls * PER_CALL_BYTES
        return max(0, (planned - fixed) // SLOT_BYTES)

    def checked(self) -> "GateBudget":
        if self.slots < 2:
            raise ValueError(f"{self.memory // MIB} MiB of memory hold {self.slots} message slot(s) of "
                             f"{SLOT_BYTES // MIB} MiB beside {self.calls} calls and {self.connections} "
                             "connections; the gate needs 2: give it more memory or fewer calls")
        return self

    def server_options(self) -> list[tuple[str, int]]:
        return [("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                ("grpc.max_send_message_length", MAX_RESPONSE_BYTES),
                ("grpc.max_concurrent_streams", STREAMS_PER_CONNECTION),
                ("grpc.server.max_pending_requests", PENDING_CALLS),
                ("grpc.server.max_pending_requests_hard_limit", 2 * PENDING_CALLS),
                ("grpc.max_allowed_incoming_connections", self.connections),
                ("grpc.server_handshake_timeout_ms", int(BODY_SECONDS * 1000)),
                # HTTP/2 flow control as the bound on bodies not yet read: without BDP probing a
                # stream's window stays at its initial 64 KiB until the gate asks for the message,
                # so a call waiting for its slot holds that much of its body, not all of it
                # (measured: 32 calls waiting on one connection, 220 MiB with probing, 107 without).
                ("grpc.http2.bdp_probe", 0)]


UPSTREAM_MESSAGE_OPTIONS = [("grpc.max_send_message_length", MAX_REQUEST_BYTES),
                            ("grpc.max_receive_message_length", MAX_RESPONSE_BYTES)]


def container_memory(proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """This process's cgroup memory limit (v2 memory.max, or v1 memory.limit_in_bytes), None if unlimited or unreadable."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "-", "")
        relative = path.lstrip("/")
        if controllers == "":
            limit = root / relative / "memory.max"
        elif "memory" in controllers.split(","):
            limit = root / "memory" / relative / "memory.limit_in_bytes"
        else:
            continue
        try:
            text = limit.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < UNLIMITED:
            return int(text)
    return None
