"""The gRPC health checks in the running stack: docker runs grpc-health-probe in the temporal
container (the copy the bootstrap put in bundle-tools, as the server image ships no client) and
in the ui-gate container, and it reports healthy only with the whole mutual TLS setup in place:
the same command without its client cert, with public CAs instead of ours, under another
service's name or against a plaintext listener fails. Reuses the docker tier's one stack."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.docker

SERVICES = ("temporal", "ui-gate")


def _healthcheck(stack, service: str) -> list[str]:
    """The health check command docker runs (compose's `test`, variables resolved)."""
    kind, *argv = stack.inspect(service)["Config"]["Healthcheck"]["Test"]
    assert kind == "CMD", kind
    return argv


def _exec(stack, service: str, argv: list[str]):
    return stack.compose("exec", "-T", service, *argv, check=False, timeout=60)


def _replace(argv: list[str], name: str, value: str | None) -> list[str]:
    """argv with flag `name` set to value (dropped for None)."""
    out = [a for a in argv if a.partition("=")[0] != name]
    return out if value is None else [*out, f"{name}={value}"]


@pytest.mark.parametrize("service", SERVICES)
def test_docker_runs_grpc_health_probe_and_it_passes(running_stack, service):
    argv = _healthcheck(running_stack, service)
    assert argv[0].endswith("/grpc-health-probe") or argv[0] == "grpc-health-probe", argv
    health = running_stack.inspect(service)["State"]["Health"]
    assert health["Status"] == "healthy", health
    # The last few checks docker ran (a single one may have failed while an earlier module restarted
    # or rotated something; healthy means fewer failures in a row than the retries).
    assert any(e["ExitCode"] == 0 and "status: SERVING" in e["Output"] for e in health["Log"]), health["Log"]
    result = _exec(running_stack, service, argv)
    assert result.returncode == 0 and "status: SERVING" in result.stderr, result.stdout + result.stderr  # its log


# The plaintext case only where a plaintext listener is in reach: the server's metrics listener
# (network.metrics_host) is on the monitoring network, which the ui-gate is not on.
CASES = [(service, case) for service in SERVICES
         for case in ("no client cert", "public CAs only", "another service's name", "plaintext listener")
         if not (service == "ui-gate" and case == "plaintext listener")]


@pytest.mark.parametrize("service,case", CASES)
def test_the_probe_fails_without_the_right_mutual_tls(running_stack, service, case):
    argv = _healthcheck(running_stack, service)
    wrong = {
        "no client cert": lambda: _replace(_replace(argv, "-tls-client-cert", None), "-tls-client-key", None),
        # The image's own trust store, without our CA.
        "public CAs only": lambda: _replace(argv, "-tls-ca-cert", "/etc/ssl/certs/ca-certificates.crt"),
        # Our CA certifies jwks, but not on this listener.
        "another service's name": lambda: _replace(argv, "-tls-server-name", "jwks"),
        "plaintext listener": lambda: _replace(argv, "-addr", "temporal-metrics:8000"),
    }[case]()
    assert wrong != argv
    result = _exec(running_stack, service, wrong)
    # 2: no connection, 3: the call failed (the probe's codes; 126/127 would be a missing binary).
    assert result.returncode in (2, 3), f"exit {result.returncode}: {result.stdout}{result.stderr}"
    assert "status: SERVING" not in result.stdout + result.stderr
