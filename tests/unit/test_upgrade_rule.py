"""The version rule of `make upgrade` (bootstrap/ops/upgrade.py): parse releases and image tags,
allow a later patch or the next minor, refuse a downgrade, a skipped minor or a major change,
and refuse new images whose tag is not the target release; every refusal is one `error:` line."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib

import pytest
import yaml

from bootstrap.errors import BundleError
from bootstrap.ops.upgrade import NOTHING_TO_DO, Version, check_step, image_version, main, parse_version
from tests.support.paths import REPO

OLD = "temporalio/server:1.31.5"
NEW_SERVER, NEW_TOOLS = "temporalio/server:1.32.2", "temporalio/admin-tools:1.32.2"


@pytest.mark.parametrize("text, expected", [("1.32.2", Version(1, 32, 2)), ("v1.31.5", Version(1, 31, 5)),
                                            (" 2.0.10\n", Version(2, 0, 10))])
def test_parse_version(text, expected):
    assert parse_version(text) == expected


@pytest.mark.parametrize("text", ["1.32", "1.32.2-rc1", "latest", "", "1.x.2"])
def test_parse_version_refuses_what_is_not_a_release(text):
    with pytest.raises(BundleError, match="not a release version"):
        parse_version(text)


@pytest.mark.parametrize("image, expected", [
    ("temporalio/server:1.31.5", Version(1, 31, 5)),
    ("registry.internal:5000/mirror/server:1.32.2", Version(1, 32, 2)),  # a port is not a tag
    ("temporal-bundle-standin/server:1.31.2@sha256:" + "a" * 64, Version(1, 31, 2)),
])
def test_image_version_reads_the_tag(image, expected):
    assert image_version(image, "image") == expected


@pytest.mark.parametrize("image", ["temporalio/server", "registry.internal:5000/server", "temporalio/server:latest"])
def test_image_version_refuses_an_image_without_a_release_tag(image):
    with pytest.raises(BundleError):
        image_version(image, "image")


def test_versions_order_numerically_not_as_text():
    assert parse_version("1.9.0") < parse_version("1.10.0") < parse_version("1.10.1")


@pytest.mark.parametrize("running, target", [("1.31.5", "1.32.2"), ("1.31.2", "1.31.5"), ("1.32.0", "1.32.2"),
                                             ("1.31.5", "1.32.0")])
def test_a_later_patch_or_the_next_minor_is_allowed(running, target):
    assert check_step(parse_version(running), parse_version(target)) is True


def test_the_running_release_is_nothing_to_do():
    assert check_step(parse_version("1.32.2"), parse_version("1.32.2")) is False


@pytest.mark.parametrize("running, target, reason", [
    ("1.31.5", "1.33.0", "skips a minor version"),
    ("1.31.5", "1.34.0", "skips a minor version"),
    ("1.32.2", "1.31.5", "is a downgrade"),
    ("1.32.2", "1.32.1", "is a downgrade"),
    ("1.32.2", "1.30.0", "is a downgrade"),
    ("1.32.2", "2.0.0", "changes the major version"),
])
def test_refused_steps(running, target, reason):
    with pytest.raises(BundleError, match=reason):
        check_step(parse_version(running), parse_version(target))


def run_main(capsys, running=OLD, version="1.32.2", server=NEW_SERVER, tools=NEW_TOOLS):
    code = main(["--running-image", running, "--version", version, "--server-image", server, "--admin-tools-image", tools])
    out, err = capsys.readouterr()
    return code, out, err


def test_main_prints_the_plan(capsys):
    code, out, err = run_main(capsys)
    assert code == 0 and err == ""
    assert out.strip() == f"upgrade: 1.31.5 -> 1.32.2 (server {NEW_SERVER}, admin-tools {NEW_TOOLS})"


def test_main_nothing_to_do_has_its_own_exit_status(capsys):
    code, out, _ = run_main(capsys, running=NEW_SERVER)
    assert code == NOTHING_TO_DO != 0 and "nothing to do" in out


@pytest.mark.parametrize("kwargs, reason", [
    ({"version": "1.34.0"}, "skips a minor version"),
    ({"running": NEW_SERVER, "version": "1.30.0"}, "is a downgrade"),
    ({"running": ""}, "not running"),
    ({"server": "temporalio/server:1.31.5"}, "TEMPORAL_SERVER_IMAGE is temporalio/server:1.31.5, not release 1.32.2"),
    ({"tools": "temporalio/admin-tools:1.32.1"}, "TEMPORAL_ADMINTOOLS_IMAGE"),
    ({"version": "latest"}, "not a release version"),
])
def test_main_refusals_are_one_error_line(capsys, kwargs, reason):
    code, out, err = run_main(capsys, **kwargs)
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and reason in lines[0], err


def test_module_runs_with_the_hosts_python():
    """The Makefile runs it as `python3 -m bootstrap.ops.upgrade` from the repository."""
    result = subprocess.run([sys.executable, "-m", "bootstrap.ops.upgrade", "--running-image", OLD, "--version", "1.33.1",
                             "--server-image", NEW_SERVER, "--admin-tools-image", NEW_TOOLS],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == "error: 1.31.5 -> 1.33.1 skips a minor version: refused (upgrade to the latest 1.32.x first)"


def make_dry_run(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "BUNDLE_", "VERSION", "IMAGES_ENV"))}
    env["BUNDLE_CONFIG_FILE"] = str(REPO / "bundle.example.yaml")  # exists: no bundle.yaml is created
    result = subprocess.run(["make", "--no-print-directory", "-n", *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60, check=True)
    return result.stdout


def compose_default(service: str) -> str:
    """The image docker-compose.prod.yml falls back to: ${VAR:-image} -> image."""
    spec = yaml.safe_load((REPO / "docker-compose.prod.yml").read_text())["services"][service]["image"]
    return spec.split(":-", 1)[1].rstrip("}")


def test_make_upgrade_defaults_to_the_release_the_compose_file_pins():
    server, tools = compose_default("temporal"), compose_default("temporal-schema")
    pinned = image_version(server, "compose default")
    out = make_dry_run("upgrade")
    assert f'--version "{pinned}"' in out
    assert f'--server-image "{server}" --admin-tools-image "{tools}"' in out


def test_make_upgrade_takes_images_from_the_image_variables():
    out = make_dry_run("upgrade", "VERSION=1.32.3", "TEMPORAL_SERVER_IMAGE=mirror/server:1.32.3",
                       "TEMPORAL_ADMINTOOLS_IMAGE=mirror/admin-tools:1.32.3")
    assert '--version "1.32.3"' in out
    assert '--server-image "mirror/server:1.32.3" --admin-tools-image "mirror/admin-tools:1.32.3"' in out


def test_version_on_the_command_line_does_not_retag_our_image():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    out = make_dry_run("up", "VERSION=9.9.9")
    assert f"temporal-bundle:{project}" in out and "temporal-bundle:9.9.9" not in out
