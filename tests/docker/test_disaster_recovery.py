"""Disaster recovery on a real Docker engine, on a stack of its own (it destroys everything, so it
never shares the tier's `make up` stack): `make up`, a completed workflow, one still waiting for a
worker, a schedule; `make backup`; `make clean` (containers AND volumes gone); a refused restore
(wrong passphrase) that leaves the engine empty, without a container or a volume; `make restore` (which ends with `make up`).
Afterwards: the same CA in all four trust domains, the same namespaces, the histories, the
schedule, the waiting workflow completes, and a client with its pre-backup certificate and token,
kept on the host, still connects. Then `make restore` of that archive onto volumes that hold
another cluster's CA is refused with one error line and every bundle file unchanged."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest

from tests.support.compose_stack import TIMINGS, ComposeStack, build_standin_images, ca_fingerprint, run, unique_project
from tests.support.paths import REPO

pytestmark = [pytest.mark.own_stack, pytest.mark.docker, pytest.mark.timeout(2400)]

DONE_ID, WAITING_ID, WAITING_QUEUE, SCHEDULE_ID = "dr-completed", "dr-waiting", "dr-waiting-queue", "dr-hourly"
OLD_CLIENT_FILES = ("trust/ca.pem", "clients/client.pem", "clients/client.key", "tokens/client.jwt")


@pytest.fixture(scope="module")
def dr_stack(tmp_path_factory):
    images = build_standin_images()
    workdir = tmp_path_factory.mktemp("dr-stack")
    secret = workdir / "passphrase"
    secret.write_text("disaster recovery test passphrase\n")
    secret.chmod(0o600)
    s = ComposeStack(unique_project("tbdr"), workdir, images, extra_env={"BACKUP_PASSPHRASE_FILE": str(secret)})
    try:
        yield s
    finally:
        print(f"\ncompose logs: {s.teardown('dr-compose.log')}\ntimings: {TIMINGS}")


def project_volumes(stack: ComposeStack) -> list[str]:
    out = run(["docker", "volume", "ls", "--quiet", "--filter", f"label=com.docker.compose.project={stack.project}"]).stdout
    return out.split()


def keep_client_files(stack: ComposeStack) -> Path:
    """The client role's cert, key, token and CA as an application holds them, on the host."""
    held = stack.workdir / "old-client"
    for relative, data in stack.read_bundle_files(*OLD_CLIENT_FILES).items():
        path = held / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o644)  # readable by the client container's user
    return held


def run_client_with(stack: ComposeStack, held, *args: str) -> dict:
    argv = ["docker", "run", "--rm", "--network", stack.network("edge"), "--read-only", "--cap-drop", "ALL",
            "-v", f"{held}:/bundle:ro", "-v", f"{REPO / 'tests'}:/opt/e2e/tests:ro",
            "--workdir", "/opt/e2e", stack.images["BUNDLE_IMAGE"], "python3", "-m", "tests.support.e2e_client", *args]
    result = run(argv, timeout=180, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, (result.stdout[-3000:], result.stderr[-3000:])
    return json.loads(lines[-1])


def state_before(stack: ComposeStack) -> dict:
    assert stack.run_client("run", DONE_ID)["ok"]
    assert stack.run_client("start", WAITING_ID, WAITING_QUEUE)["ok"]
    assert stack.run_client("schedule-create", SCHEDULE_ID)["ok"]
    return {
        "cas": ca_fingerprint(stack),
        "namespaces": stack.run_client("namespaces")["namespaces"],
        "done": stack.run_client("history", DONE_ID),
        "waiting": stack.run_client("history", WAITING_ID),
    }


def test_backup_down_v_restore_up_brings_back_the_cluster(dr_stack):
    stack = dr_stack
    started = time.monotonic()
    stack.up()
    before = state_before(stack)
    assert before["done"]["status"] == "COMPLETED" and before["waiting"]["status"] == "RUNNING", before
    held = keep_client_files(stack)

    archive = stack.workdir / "backups" / "cluster.tbak"
    backup = stack.make("backup", f"BACKUP={archive}")
    assert "backup 1/2" in backup.stdout and "backup 2/2" in backup.stdout, backup.stdout
    assert "databases: temporal, temporal_visibility" in backup.stdout, backup.stdout
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600

    stack.make("clean", "CONFIRM=yes")
    assert project_volumes(stack) == [] and stack.containers() == []

    wrong = stack.workdir / "wrong"
    wrong.write_text("not the passphrase at all\n")
    refused = stack.make("restore", f"BACKUP={archive}", f"BACKUP_PASSPHRASE_FILE={wrong}", check=False)
    assert refused.returncode != 0
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "wrong passphrase" in errors[0], refused.stderr
    assert stack.containers() == [] and project_volumes(stack) == []  # not even an empty volume
    assert "restore 2/5" not in refused.stdout

    restored = stack.make("restore", f"BACKUP={archive}", timeout=1200)
    for step in range(1, 6):
        assert f"restore {step}/5" in restored.stdout, restored.stdout
    assert "ready in" in restored.stdout
    TIMINGS["dr_total_s"] = time.monotonic() - started

    assert ca_fingerprint(stack) == before["cas"]
    assert stack.run_client("namespaces")["namespaces"] == before["namespaces"]
    assert stack.run_client("history", DONE_ID) == before["done"]
    assert stack.run_client("history", WAITING_ID)["events"] == before["waiting"]["events"]
    assert stack.run_client("schedule-describe", SCHEDULE_ID)["ok"]
    assert stack.run_client("finish", WAITING_ID, WAITING_QUEUE)["ok"]  # in flight before the disaster
    old = run_client_with(stack, held, "history", DONE_ID)
    assert old["ok"] and old["status"] == "COMPLETED", old


def test_make_restore_refuses_another_clusters_archive_and_changes_nothing(dr_stack):
    """Runs after the test above (file order), with its archive: an engine whose volumes hold
    another cluster's CA (a fresh bootstrap) keeps every byte of them."""
    stack = dr_stack
    archive = stack.workdir / "backups" / "cluster.tbak"
    assert archive.is_file(), "the disaster-recovery test above must run first"
    stack.make("clean", "CONFIRM=yes")
    stack.compose("run", "--rm", "--no-deps", "bootstrap")  # another cluster: new CAs in new volumes
    before = stack.bundle_digests()
    refused = stack.make("restore", f"BACKUP={archive}", check=False)
    assert refused.returncode != 0
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "another cluster" in errors[0], refused.stderr
    assert "restore 2/5" not in refused.stdout
    assert stack.bundle_digests() == before
    assert stack.containers() == []
