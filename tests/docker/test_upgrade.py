"""`make upgrade` on a real Docker engine, on a stack of its own (it replaces the server, so it
never shares the tier's `make up` stack): `make up` on the previous release's stand-ins, a
completed workflow, one sleeping on a timer and one waiting for a signal; a skipped-minor request
refused with nothing changed; `make upgrade` to the pinned release (backup, schema job, new
server); then the histories are intact, the waiting workflows complete, a client token still
starts workflows, a reader token reads but cannot start one, and a call without a token or a
cert is still refused; a downgrade request, `make up` with the old release's images (the
database records the release that migrated it) and a request for the running release change
nothing."""

from __future__ import annotations

import os
import time

import pytest
import yaml

from tests.support.compose_stack import TIMINGS, ComposeStack, build_standin_images, unique_project

pytestmark = [pytest.mark.own_stack, pytest.mark.docker, pytest.mark.timeout(2400)]

# The previous line's release to upgrade from. 1.31.5 is the newest, but its module needs
# go.temporal.io/auto-scaled-workers v0.0.1-1.31.2, which the Go module proxy refuses (403) here;
# 1.31.2 is on the same line (1.31.x -> 1.32.2 needs no config or schema change).
OLD_RELEASE = os.environ.get("UPGRADE_FROM_RELEASE", "1.31.2")
SERVER_VARS = ("TEMPORAL_SERVER_IMAGE", "TEMPORAL_ADMINTOOLS_IMAGE")
DONE_ID, TIMER_ID, SIGNAL_ID, QUEUE = "up-completed", "up-timer", "up-signal", "up-waiting-queue"
CLIENT = "tests.support.upgrade_client"
TIMER_SECONDS = "45"  # longer than backup + schema job + server replacement take to start


@pytest.fixture(scope="module")
def images():
    old = build_standin_images(OLD_RELEASE)
    new = build_standin_images()
    assert old["TEMPORAL_SERVER_IMAGE"] != new["TEMPORAL_SERVER_IMAGE"]
    return old, new


@pytest.fixture(scope="module")
def stack(images, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("upgrade-stack")
    secret = workdir / "passphrase"
    secret.write_text("upgrade test backup passphrase\n")
    secret.chmod(0o600)
    s = ComposeStack(unique_project("tbup"), workdir, dict(images[0]), extra_env={"BACKUP_PASSPHRASE_FILE": str(secret)})
    # The stack's own test config (its published and Dex ports), plus the example's reader role.
    add_reader_role(s.config)
    try:
        yield s
    finally:
        print(f"\ncompose logs: {s.teardown('upgrade-compose.log')}\ntimings: {TIMINGS}")


def add_reader_role(path) -> None:
    """The example's `reader` role (default:read), switched on in the stack's bundle.yaml."""
    doc = yaml.safe_load(path.read_text())
    doc["roles"]["reader"] = {"permissions": ["default:read"], "token_lifetime": "8h"}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def use_images(stack: ComposeStack, images: dict[str, str]) -> None:
    """What an operator does before `make upgrade`: point the server image variables at a release."""
    stack.images.update({var: images[var] for var in SERVER_VARS})


def server_state(stack: ComposeStack) -> tuple[str, str]:
    info = stack.inspect("temporal")
    return info["Id"], info["Config"]["Image"]


def assert_refused(stack: ComposeStack, reason: str, *args: str) -> None:
    """make upgrade ARGS fails with one `error:` line naming REASON, takes no backup, keeps the server."""
    before = server_state(stack)
    archive = stack.workdir / f"refused-{reason.replace(' ', '-')}.tbak"
    result = stack.make("upgrade", f"BACKUP={archive}", *args, check=False)
    assert result.returncode != 0, result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and reason in errors[0], result.stderr
    assert "upgrade 1/3" not in result.stdout and not archive.exists()
    assert server_state(stack) == before


def upgraded_to(images: dict[str, str]) -> str:
    return images["TEMPORAL_SERVER_IMAGE"].rsplit(":", 1)[1]


def assert_up_refused(stack: ComposeStack, *fragments: str) -> None:
    """`make up` with the old image variables on the upgraded database: the bootstrap refuses
    (one `error:` line), and the upgraded server keeps running in the same container."""
    before = server_state(stack)
    result = stack.make("up", check=False)
    assert result.returncode != 0, result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and all(f in errors[0] for f in fragments), result.stderr
    assert server_state(stack) == before
    assert stack.inspect("temporal")["State"]["Health"]["Status"] == "healthy"


def history(stack: ComposeStack, workflow_id: str) -> dict:
    return stack.run_client("history", workflow_id, module=CLIENT)


def start_workflows(stack: ComposeStack) -> dict:
    assert stack.run_client("run", DONE_ID)["ok"]
    assert stack.run_client("start", QUEUE, TIMER_ID, SIGNAL_ID, TIMER_SECONDS, module=CLIENT)["ok"]
    histories = {wid: history(stack, wid) for wid in (DONE_ID, TIMER_ID, SIGNAL_ID)}
    assert histories[DONE_ID]["status"] == "COMPLETED", histories
    assert histories[TIMER_ID]["status"] == histories[SIGNAL_ID]["status"] == "RUNNING", histories
    assert "EVENT_TYPE_TIMER_STARTED" in histories[TIMER_ID]["events"]
    return histories


def test_upgrade_keeps_workflows_and_refuses_skips_and_downgrades(stack, images):
    old, new = images
    stack.up()
    assert server_state(stack)[1] == old["TEMPORAL_SERVER_IMAGE"]
    before = start_workflows(stack)
    use_images(stack, new)
    assert_refused(stack, "skips a minor version", "VERSION=1.34.0")

    archive = stack.workdir / "pre-upgrade.tbak"
    started = time.monotonic()
    result = stack.make("upgrade", f"BACKUP={archive}", timeout=900)
    TIMINGS["make_upgrade_s"] = time.monotonic() - started
    out = result.stdout
    assert f"upgrade: {OLD_RELEASE} -> " in out, out
    for step in ("upgrade 1/3", "backup 2/2", "upgrade 2/3", "up to date", "upgrade 3/3"):
        assert step in out, (step, out)
    assert out.index("upgrade 1/3") < out.index("upgrade 2/3") < out.index("upgrade 3/3")
    assert archive.is_file()
    assert server_state(stack)[1] == new["TEMPORAL_SERVER_IMAGE"]

    after = {wid: history(stack, wid) for wid in before}
    assert after[DONE_ID] == before[DONE_ID]
    for wid in (TIMER_ID, SIGNAL_ID):
        assert after[wid]["events"][: len(before[wid]["events"])] == before[wid]["events"], (wid, after[wid])
    finished = stack.run_client("finish", QUEUE, TIMER_ID, SIGNAL_ID, module=CLIENT)
    assert finished["ok"], finished
    for wid in (TIMER_ID, SIGNAL_ID):
        final = history(stack, wid)
        assert final["status"] == "COMPLETED" and final["events"][: len(before[wid]["events"])] == before[wid]["events"]
    assert "EVENT_TYPE_TIMER_FIRED" in history(stack, TIMER_ID)["events"]
    assert "EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED" in history(stack, SIGNAL_ID)["events"]

    assert stack.run_client("run", "up-after-upgrade")["ok"]  # a client token still starts workflows
    refused = stack.run_client("refused")  # no token, no client cert, plaintext: all still refused
    assert refused["ok"], refused
    read_only = stack.run_client("reader", DONE_ID, module=CLIENT)  # reads, but cannot start
    assert read_only["ok"] and read_only["described"] == "COMPLETED", read_only

    use_images(stack, old)
    assert_refused(stack, "is a downgrade", f"VERSION={OLD_RELEASE}")
    assert_up_refused(stack, f"last migrated by Temporal {upgraded_to(new)}", "an older server is refused")
    use_images(stack, new)
    unchanged = server_state(stack)
    same = stack.make("upgrade", f"BACKUP={stack.workdir / 'same.tbak'}")
    assert "nothing to do" in same.stdout and "upgrade 1/3" not in same.stdout
    assert not (stack.workdir / "same.tbak").exists() and server_state(stack) == unchanged
