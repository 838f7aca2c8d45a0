"""One compose stack for the whole docker tier (session scope): test_compose_stack.py brings it up
with `make up` and drives it through restarts and rotation; test_edge_attacks.py attacks the same
stack from the edge network; test_monitoring_stack.py queries its Prometheus (the stack runs with the
compose profile `monitoring`). Teardown dumps every log and removes the volumes.

BUNDLE_TEST_KEYS_BACKEND=pkcs11 runs that shared stack with its CA and signing keys in the image's
SoftHSM2 token (docker-compose.pkcs11.yml), so the whole tier, the attack matrices included, runs
against a pkcs11 cluster; the default stays `file` (see docs/testing.md)."""

from __future__ import annotations

import os
import time

import pytest

from tests.support.compose_stack import TIMINGS, ComposeStack, build_standin_images, grafana_files, grafana_image, unique_project


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    started = time.monotonic()
    images = build_standin_images()
    TIMINGS["build_images_s"] = time.monotonic() - started
    backend = os.environ.get("BUNDLE_TEST_KEYS_BACKEND", "file")
    if backend not in ("file", "pkcs11"):
        pytest.fail(f"BUNDLE_TEST_KEYS_BACKEND={backend!r}: file or pkcs11")
    extra = grafana_files()
    if extra:
        print(f"\nGrafana image {grafana_image()} not available here: the stack runs the profile monitoring without Grafana")
    s = ComposeStack(unique_project("tbe2e"), tmp_path_factory.mktemp("compose-stack"), images, profiles=("monitoring",),
                     compose_files=("docker-compose.prod.yml", *extra), keys_backend=backend)
    try:
        yield s
    finally:
        log = s.teardown()
        print(f"\ncompose logs: {log}\ntimings: {TIMINGS}")
        print("\n".join(log.read_text().splitlines()[-150:]))


@pytest.fixture(scope="session")
def running_stack(stack):
    """The shared stack, brought up with `make up` if no test did it yet (a module run alone)."""
    if getattr(stack, "last_up_output", None) is None:
        TIMINGS["make_up_first_s"] = stack.up()
    return stack
