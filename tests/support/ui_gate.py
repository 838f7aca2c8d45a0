"""The UI gate as compose runs it (`python -m bootstrap serve-ui-gate`) in front of the server tier's
cluster, and the gRPC status a call through it ends with."""

from __future__ import annotations

import socket
import subprocess
import sys

from temporalio.service import RPCError, RPCStatusCode

from tests.support.ports import free_port
from tests.support.waits import wait_until


def start_gate(cluster, upstream: str, info, log_name: str = "ui-gate.log",
                popen=subprocess.Popen) -> tuple[subprocess.Popen, str]:
    """`python -m bootstrap serve-ui-gate` as compose runs it; `popen` may start it inside a MemoryLimit."""
    port = free_port()
    log = open(cluster.workdir / log_name, "ab")
    process = popen(
        [sys.executable, "-m", "bootstrap", "serve-ui-gate", "--config", str(cluster.config_path), "--out",
         str(cluster.bundle), "--host", "127.0.0.1", "--port", str(port), "--upstream", upstream,
         "--cluster-info", str(info), "--jwks-url", f"https://localhost:{cluster.jwks_port}/jwks.json"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )

    def listening() -> bool:
        assert process.poll() is None, (cluster.workdir / log_name).read_text()[-2000:]
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, 30, "the UI gate")
    return process, f"127.0.0.1:{port}"


async def call_status(call) -> RPCStatusCode | None:
    try:
        await call
    except RPCError as exc:
        return exc.status
    return None


FORWARDED_SERVICES = ("temporal.api.workflowservice.v1.WorkflowService", "temporal.api.operatorservice.v1.OperatorService")
