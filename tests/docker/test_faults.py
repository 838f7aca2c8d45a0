"""The fault matrix under load, on the docker tier's shared stack (real engine, real server, real
PostgreSQL): a steady load of workflow starts, signals and completions (tests/support/fault_load.py,
in a container on the edge network) runs while one fault at a time is injected. Each fault must
lose no workflow (every started id completes, checked by id) and the load must be back within
the fault's bound; the figures are printed as the table in benchmarks/RESULTS.md.

Covered: kill -9 of the Temporal server, PostgreSQL restarted, PostgreSQL stopped for 30 s, the
JWKS server, the token refresher and the codec server down together for longer than both the JWKS
refresh interval and the refresher's window (its `--watch` interval: the load keeps the tokens it
holds; its workers encrypt with the data keys themselves, so the codec server's absence shows only
as a failed decode, the Web UI's and the CLI's, which must work again once it is back), the
network between Temporal and PostgreSQL (backend) cut for 20 s, and the bundle full while `rotate`
and `mint-tokens` run.

Reuses the docker tier's one stack (conftest.py); leaves it healthy for the modules after it.
"""

from __future__ import annotations

import time

import pytest

from bootstrap.core.config import load_config

from tests.support.compose_stack import LONG_RUNNING
from tests.support.faults import (
    TABLE_HEAD, Outcome, bundle_command, digests, free_space, full_volume_copy, refresher_window_s,
    remove_volume, service_faults, under_fault, wait_healthy,
)

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

OUTCOMES: list[Outcome] = []


@pytest.fixture(scope="module", autouse=True)
def table():
    yield
    print("\nfault matrix under load (measured on this run):\n" + TABLE_HEAD + "\n" + "\n".join(o.row() for o in OUTCOMES))


def check(outcome: Outcome, recovery_bound: float, max_failed: int | None = None) -> None:
    OUTCOMES.append(outcome)
    print(f"\n{outcome.row()}  errors: {outcome.errors}")
    assert outcome.started > 0, "the load started no workflow"
    assert not outcome.lost, f"{outcome.fault}: workflows lost: {outcome.lost}"
    assert outcome.recovery_s <= recovery_bound, f"{outcome.fault}: back after {outcome.recovery_s:.1f}s > {recovery_bound}s"
    if max_failed is not None:
        assert outcome.failed_calls <= max_failed, f"{outcome.fault}: {outcome.failed_calls} calls failed: {outcome.errors}"


BOUNDS = {  # seconds until the load is back after the fault ended; calls allowed to fail (None: any)
    "temporal": (120, None),
    "postgresql: restart": (60, None),
    "postgresql: stopped": (60, None),
    "JWKS": (60, None),  # and no call refused: the server keeps its last key set; the tokens stay valid
    "network": (60, None),
}


def bound_of(name: str) -> tuple[float, int | None]:
    return next(v for k, v in BOUNDS.items() if name.startswith(k))


@pytest.mark.parametrize("index", range(5), ids=["kill-9-temporal", "restart-postgresql", "stop-postgresql-30s",
                                                  "jwks-refresher-codec-down", "cut-temporal-backend"])
def test_service_fault_under_load(running_stack, index):
    refresh = load_config(running_stack.config).jwt.refresh_interval.total_seconds()
    codec: dict = {}
    name, inject = service_faults(refresh, codec)[index]
    recovery, max_failed = bound_of(name)
    outcome = under_fault(running_stack, name, inject)
    try:
        check(outcome, recovery, max_failed)
    except AssertionError:
        lines = running_stack.logs("temporal").splitlines()[-40:]
        print("\nthe server's last log lines (cut at 300 characters):\n" + "\n".join(line[:300] for line in lines))
        raise
    if name.startswith("JWKS"):
        # Tokens signed with the published key, minted before the refresher stopped, keep working
        # while the JWKS and the refresher are down. (Calls may still time out on a starved
        # machine: once, 17 of 304 failed here, status unrecorded; in the other runs none failed.)
        assert outcome.refused == 0, f"tokens refused while the JWKS and the token refresher were down: {outcome.errors}"
        assert outcome.fault_s > refresher_window_s(), "the token refresher was not down for a whole window"
        check_codec_outage(codec)


def check_codec_outage(codec: dict) -> None:
    """While the codec server was down a decode failed; once back, it decoded within 60 s the
    input of the load's first workflow, as its encrypting starter stored it in history."""
    print(f"\ncodec server: while down {codec['while_down']}; decode back {codec['back_after_s']:.1f} s after its start")
    assert not codec["while_down"]["ok"] and "error" in codec["while_down"], codec["while_down"]
    assert codec["back_after_s"] <= 60, codec["back"]
    back = codec["back"]
    assert back["ok"] and back["encrypted"] and back["workflow_id"].startswith("fault-"), back


def test_full_bundle_volume_fails_rotate_and_tokens_cleanly(running_stack):
    """Under load: rotate and mint-tokens on a copy of the stack's bundle on a tmpfs filled to the
    last byte give one-line errors and non-zero exits and leave every file byte-identical; with
    space again, mint-tokens works. (The stack's own volumes live on the host's disk: a copy on a
    full tmpfs is how to fill "the bundle" without filling the host.)"""
    seen = {}

    def inject(stack):
        volume = full_volume_copy(stack)
        injected = time.time()
        try:
            before = digests(stack, volume)
            seen["files"] = len(before)
            assert any(name.startswith("./tokens/") for name in before) and "./private/ca.key" in before
            for args in (("mint-tokens", "--force"), ("rotate", "--kind", "certs", "--all")):
                result = bundle_command(stack, volume, *args)
                errors = [line for line in result.stderr.splitlines() if line.strip()]
                seen[" ".join(args)] = errors
                assert result.returncode != 0, (args, result.stdout, result.stderr)
                assert len(errors) == 1 and errors[0].startswith("error: "), (args, result.stderr)
                assert digests(stack, volume) == before, f"{args} changed files on a full disk"
            free_space(stack, volume)
            again = bundle_command(stack, volume, "mint-tokens", "--force")
            assert again.returncode == 0, again.stderr
            assert digests(stack, volume) != before
        finally:
            remove_volume(volume)
        return injected, time.time()

    outcome = under_fault(running_stack, "bundle full (a copy on a full tmpfs): rotate + mint-tokens refused", inject)
    print(f"\nfull bundle: {seen}")
    # The stack's own files are untouched, so nothing is refused and nothing lost; on a loaded
    # machine a call may still miss its 10 s deadline (CANCELLED), which says nothing about the fault.
    check(outcome, 30)
    assert outcome.refused == 0, f"calls refused while rotate and mint-tokens failed on the full copy: {outcome.errors}"
    assert all("Timeout expired" in e or "DEADLINE" in e for e in outcome.errors), \
        f"calls failed other than by a missed deadline: {outcome.errors}"


def test_stack_is_healthy_after_the_faults(running_stack):
    for service in LONG_RUNNING:
        wait_healthy(running_stack, service, timeout=120)
