"""The fault matrix's machinery, shared by tests/docker/test_faults.py and benchmarks/bench_faults.py:
run tests/support/fault_load.py in a container on the edge network, inject one fault into the
compose stack on the real engine, stop the load, and measure.

Per fault: workflows lost (every id whose start succeeded must complete, checked by id; "late"
ones, not complete within the load's drain, get a fresh worker on their queue first), client
calls failed from the injection on, and seconds from the end of the fault until the load was back
(the first successful call after the last failed one; 0 when nothing failed after the fault ended).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field

import yaml

from tests.support.compose_stack import ComposeStack, StackError, run
from tests.support.paths import REPO

LANES = 3
SETTLE_S = 8  # load running before the fault, and after the stack answers again


@dataclass
class Outcome:
    fault: str
    started: int
    lost: list[str]
    late: int  # complete only once a fresh worker polled their queue (not within the drain)
    failed_calls: int
    total_calls: int
    recovery_s: float
    fault_s: float
    errors: list[str] = field(default_factory=list)
    refused: int = 0  # calls the server refused for authentication or authorization

    def row(self) -> str:
        return (f"| {self.fault} | {self.fault_s:.0f} | {self.started} | {len(self.lost)} | {self.late} | "
                f"{self.failed_calls} of {self.total_calls} | {self.recovery_s:.1f} |")


TABLE_HEAD = ("| fault | fault lasted (s) | workflows started | lost | late | calls failed | recovered after (s) |\n"
              "| --- | --- | --- | --- | --- | --- | --- |")


def load_argv(stack: ComposeStack, *args: str, detach: bool = True) -> list[str]:
    return [
        "docker", "run", *(["-d"] if detach else ["--rm"]), "--network", stack.network("edge"), "--read-only",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true", "--label", f"temporal-bundle-test={stack.project}",
        "--label", f"temporal-bundle-fault-load={stack.project}",
        "-v", f"{stack.volume('bundle-trust')}:/bundle/trust:ro",
        "-v", f"{stack.volume('bundle-clients')}:/bundle/clients:ro",
        "-v", f"{stack.volume('bundle-tokens')}:/bundle/tokens:ro",
        "-v", f"{stack.volume('bundle-codec-keys')}:/bundle/codec-keys:ro",
        "-v", f"{stack.volume('bundle-codec-kek')}:/bundle/codec-kek:ro",
        "-v", f"{REPO / 'tests'}:/opt/e2e/tests:ro", "--workdir", "/opt/e2e",
        stack.images["BUNDLE_IMAGE"], "python3", "-m", "tests.support.fault_load", *args,
    ]


def finish_late(stack: ComposeStack, queue: str, ids: list[str]) -> list[str]:
    """Ids still not complete after a fresh worker polled their queue for 180 s: lost."""
    if not ids:
        return []
    out = run(load_argv(stack, "finish", queue, *ids, detach=False), timeout=400, check=False).stdout
    lines = [line for line in out.splitlines() if line.startswith('{"finished"')]
    if not lines:
        raise StackError(f"fault_load finish printed no result:\n{out[-3000:]}")
    return json.loads(lines[-1])["lost"]


def start_load(stack: ComposeStack) -> str:
    argv = load_argv(stack, str(LANES))
    container = run(argv).stdout.strip()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        logs = run(["docker", "logs", container], check=False).stdout
        if '"ready"' in logs:
            return container
        state = run(["docker", "inspect", "-f", "{{.State.Running}}", container], check=False).stdout.strip()
        if state != "true":
            break
        time.sleep(1)
    out = run(["docker", "logs", container], check=False)
    run(["docker", "rm", "-f", container], check=False)
    raise StackError(f"fault load did not start:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def stop_load(container: str) -> dict:
    run(["docker", "kill", "--signal", "TERM", container], check=False)
    run(["docker", "wait", container], timeout=420)
    out = run(["docker", "logs", container], check=False)
    run(["docker", "rm", "-f", container], check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith('{"started"')]
    if not lines:
        raise StackError(f"fault load printed no summary:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def measure(name: str, summary: dict, injected: float, restored: float, lost: list[str]) -> Outcome:
    calls = [c for c in summary["calls"] if c[0] >= injected]
    failed = [c for c in calls if not c[2]]
    recovery = 0.0
    if failed:
        last_failure = max(c[0] for c in failed)
        after = [c[0] for c in calls if c[2] and c[0] > last_failure]
        recovery = (min(after) if after else float("inf")) - restored
    errors = list(dict.fromkeys(f"{c[0] - injected:+.1f}s {c[1]}: {c[3][:200]}" for c in failed))
    refused = sum(1 for c in failed if any(s in c[3] for s in REFUSALS))
    return Outcome(name, summary["started"], lost, len(summary["late"]), len(failed), len(calls), max(0.0, recovery),
                   restored - injected, errors[:3] + errors[-2:] if len(errors) > 5 else errors, refused)


REFUSALS = ("(UNAUTHENTICATED)", "(PERMISSION_DENIED)")


def wait_healthy(stack: ComposeStack, service: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = stack.inspect(service)["State"].get("Health", {}).get("Status")
        if health == "healthy":
            return
        time.sleep(1)
    raise StackError(f"{service} not healthy after {timeout:.0f}s")


def under_fault(stack: ComposeStack, name: str, inject) -> Outcome:
    """Run the load, call inject(stack) -> (injected, restored) unix times, let it settle, stop, measure."""
    container = start_load(stack)
    try:
        time.sleep(SETTLE_S)
        injected, restored = inject(stack)
        time.sleep(SETTLE_S)
    finally:
        summary = stop_load(container)
    lost = finish_late(stack, summary["queue"], summary["late"])
    return measure(name, summary, injected, restored, lost)


# --------------------------------------------------------------------------- faults


def kill_temporal(stack: ComposeStack):
    """kill -9 of the server process from the host, as the OOM killer would: the restart policy
    brings it back."""
    state = stack.inspect("temporal")["State"]
    injected = time.time()
    os.kill(state["Pid"], 9)
    restored = None
    while time.time() - injected < 120:
        now = stack.inspect("temporal")["State"]
        if now["StartedAt"] != state["StartedAt"] and now["Running"]:
            restored = time.time()  # the restart policy started it again
            break
        time.sleep(0.5)
    if restored is None:
        raise StackError("temporal was not restarted by its restart policy within 120 s")
    wait_healthy(stack, "temporal")
    return injected, restored


def restart_postgres(stack: ComposeStack):
    injected = time.time()
    stack.compose("restart", "postgresql", timeout=180)
    restored = time.time()
    wait_healthy(stack, "postgresql")
    return injected, restored


def stop_postgres(seconds: float):
    def inject(stack: ComposeStack):
        injected = time.time()
        stack.compose("stop", "postgresql", timeout=180)
        time.sleep(max(0.0, seconds - (time.time() - injected)))
        stack.compose("start", "postgresql", timeout=180)
        restored = time.time()
        wait_healthy(stack, "postgresql")
        return injected, restored
    return inject


def stop_services(services: tuple[str, ...], seconds: float, codec: dict | None = None):
    """Stop `services` together for `seconds`, then start them again. With `codec` (the codec
    server among them): a decode while it is down, then seconds from its start until it decodes
    again the encrypted input of the running load's first workflow, recorded there."""
    def inject(stack: ComposeStack):
        injected = time.time()
        stack.compose("stop", *services, timeout=120)
        if codec is not None:
            codec["while_down"] = stack.run_client("codec-decode", volumes=CODEC_VOLUMES)
        time.sleep(max(0.0, seconds - (time.time() - injected)))
        stack.compose("start", *services, timeout=120)
        restored = time.time()
        for service in services:
            wait_healthy(stack, service)
        if codec is not None:
            codec["back_after_s"], codec["back"] = decode_recovery(stack, restored)
        return injected, restored
    return inject


CODEC_VOLUMES = ("codec-keys", "codec-kek")


def load_first_workflow(stack: ComposeStack) -> str:
    """The first workflow id the running load started (its summary line {"first": ...})."""
    (container,) = run(["docker", "ps", "-q", "--filter", f"label=temporal-bundle-fault-load={stack.project}"]).stdout.split()
    logs = run(["docker", "logs", container], check=False).stdout
    return json.loads(next(line for line in logs.splitlines() if line.startswith('{"first"')))["first"]


def decode_recovery(stack: ComposeStack, since: float, timeout: float = 60) -> tuple[float, dict]:
    """Seconds from `since` until the codec server decoded again the stored (encrypted) input of
    the load's first workflow (inf if not in time)."""
    deadline, workflow_id = time.time() + timeout, load_first_workflow(stack)
    while True:
        out = dict(stack.run_client("codec-decode", workflow_id, volumes=CODEC_VOLUMES), workflow_id=workflow_id)
        if out["ok"] or time.time() > deadline:
            return (time.time() - since if out["ok"] else float("inf")), out
        time.sleep(1)


def refresher_window_s() -> float:
    """The token refresher's window: SECONDS of its `mint-tokens --watch SECONDS` in the compose file."""
    command = yaml.safe_load((REPO / "docker-compose.prod.yml").read_text())["services"]["token-refresher"]["command"]
    return float(command[command.index("--watch") + 1])


# --------------------------------------------------------------------------- a full bundle volume

# Every bundle volume, mounted as the bootstrap mounts them.
BUNDLE_DIRS = ("private", "private/jwt", "trust", "server", "dbclient", "postgres", "jwks", "ui", "dex", "grafana", "clients",
               "tokens", "config", "codec", "codec-keys", "registrar")
VOLUME_OF = {"private/jwt": "bundle-signing"}


def _bundle_mounts(stack: ComposeStack, at: str) -> list[str]:
    mounts = ["-v", f"{stack.volume('bundle-root')}:{at}:ro"]
    for d in BUNDLE_DIRS:
        mounts += ["-v", f"{stack.volume(VOLUME_OF.get(d, 'bundle-' + d))}:{at}/{d}:ro"]
    return mounts


def full_volume_copy(stack: ComposeStack, size: str = "16m") -> str:
    """A tmpfs volume holding a copy of the stack's bundle, then filled to the last byte."""
    name = f"{stack.project}_faults-full-bundle"
    run(["docker", "volume", "create", "--driver", "local", "--opt", "type=tmpfs", "--opt", "device=tmpfs",
         "--opt", f"o=size={size}", "--label", f"temporal-bundle-test={stack.project}", name])
    # A tmpfs volume lives only while a container mounts it: this one holds it for the others.
    run(["docker", "run", "-d", "--name", f"{name}-holder", "--network", "none", "--entrypoint", "sleep",
         "-v", f"{name}:/held", stack.images["BUNDLE_IMAGE"], "infinity"])
    script = "cp -a /src/. /dst/ && (dd if=/dev/zero of=/dst/.filler bs=4k 2>/dev/null || true) && sync && df -k /dst"
    out = run(["docker", "run", "--rm", "--network", "none", "--user", "0:0", "--entrypoint", "sh",
               *_bundle_mounts(stack, "/src"), "-v", f"{name}:/dst", stack.images["BUNDLE_IMAGE"], "-c", script]).stdout
    assert " 100% " in out or out.split()[-3] == "0", out  # no byte left
    return name


def bundle_command(stack: ComposeStack, volume: str, *args: str) -> subprocess.CompletedProcess:
    """A temporal-bundle command in the bootstrap's image and role, on the copy in `volume`."""
    return run(["docker", "run", "--rm", "--network", "none", "--user", "0:0",
                "-e", "BUNDLE_CONFIG=/etc/temporal-bundle/bundle.yaml", "-e", "BUNDLE_DIR=/bundle",
                "-v", f"{stack.config}:/etc/temporal-bundle/bundle.yaml:ro", "-v", f"{volume}:/bundle",
                stack.images["BUNDLE_IMAGE"], *args], check=False, timeout=300)


def digests(stack: ComposeStack, volume: str) -> dict[str, str]:
    out = run(["docker", "run", "--rm", "--network", "none", "--user", "0:0", "--entrypoint", "sh", "-v",
               f"{volume}:/b:ro", stack.images["BUNDLE_IMAGE"], "-c",
               "cd /b && find . -type f ! -name .filler -exec sha256sum {} + | sort -k2"]).stdout
    return {line.split()[1]: line.split()[0] for line in out.splitlines() if line.strip()}


def free_space(stack: ComposeStack, volume: str) -> None:
    run(["docker", "run", "--rm", "--network", "none", "--user", "0:0", "--entrypoint", "rm", "-v", f"{volume}:/b",
         stack.images["BUNDLE_IMAGE"], "-f", "/b/.filler"])


def remove_volume(name: str) -> None:
    run(["docker", "rm", "-f", f"{name}-holder"], check=False)
    run(["docker", "volume", "rm", "-f", name], check=False)


def cut_network(service: str, network: str, seconds: float):
    """`docker network disconnect` of one service from one network, then connect it again."""
    def inject(stack: ComposeStack):
        container, net = stack.container_id(service), stack.network(network)
        aliases = [service]
        injected = time.time()
        run(["docker", "network", "disconnect", net, container])
        try:
            time.sleep(seconds)
        finally:
            run(["docker", "network", "connect", *sum((["--alias", a] for a in aliases), []), net, container])
        return injected, time.time()
    return inject


def service_faults(jwks_refresh_s: float, codec: dict | None = None) -> list[tuple[str, object]]:
    """(name, inject) of every service fault the matrix covers, in the order test_faults.py runs them.
    The JWKS server, the token refresher and the codec server go down together, for longer than
    both the JWKS refresh interval and the refresher's window: none of them is on a running
    workload's path, and one round instead of three keeps the tier's time (codec: see stop_services)."""
    window = refresher_window_s()
    down = max(jwks_refresh_s, window) + 5  # so at least one JWKS refresh and one refresher round are missed
    return [
        ("temporal: kill -9, restarted by the restart policy", kill_temporal),
        ("postgresql: restart", restart_postgres),
        ("postgresql: stopped 30 s", stop_postgres(30)),
        (f"JWKS server + token refresher + codec server: stopped {down:.0f} s (JWKS refresh every "
         f"{jwks_refresh_s:.0f} s, tokens re-checked every {window:.0f} s)",
         stop_services(("jwks", "token-refresher", "codec-server"), down, codec)),
        ("network temporal-postgresql (backend) cut 20 s", cut_network("temporal", "backend", 20)),
    ]
