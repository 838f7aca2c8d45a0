"""The outcome of the kubelet-rotation pod (tests/support/kube_rotation.py), which
tests/kube/conftest.py started with the kube tier: it ran a workflow every PAUSE_SECONDS for
longer than its first projected token lived, and no call failed."""

from __future__ import annotations

import json
import re

import pytest

from tests.support.kube_pods import finished
from tests.support.kube_rotation import KUBELET_MAX_JITTER, PAUSE_SECONDS, ROTATION_NAMESPACE, RUN_SECONDS, TOKEN_SECONDS

pytestmark = pytest.mark.timeout(1500)


def test_the_kubelets_rotation_of_the_projected_token_fails_no_call(kube, rotation_pod):
    assert rotation_pod, "tests/kube/conftest.py starts the pod when this module is collected"
    doc = finished(kube, ROTATION_NAMESPACE, rotation_pod, timeout=RUN_SECONDS + 300)
    logs = kube.kubectl("logs", rotation_pod, "-n", ROTATION_NAMESPACE).stdout
    assert doc["status"]["phase"] == "Succeeded", (doc["status"], logs[-3000:])
    summary = json.loads(re.search(r"^summary: (.*)$", logs, re.M).group(1))
    print(f"\nkubelet rotation: {summary}")
    assert re.findall(r"^failed: .*$", logs, re.M) == []
    assert summary["failed"] == 0 and summary["exchange_failures"] == 0, summary
    assert summary["seconds"] >= RUN_SECONDS and summary["calls"] >= RUN_SECONDS // (2 * PAUSE_SECONDS), summary

    # The kubelet wrote a second token before the first expired, and the run went on past that expiry.
    tokens = [json.loads(t) for t in re.findall(r"^projected token: (.*)$", logs, re.M)]
    assert len(tokens) >= 2, tokens
    first, second = tokens[0], tokens[1]
    assert first["exp"] - first["iat"] == TOKEN_SECONDS and second["exp"] - second["iat"] == TOKEN_SECONDS
    # kubelet v1.37.2 (pkg/kubelet/token/token_manager.go) refreshes within 20 % of the lifetime of
    # the expiry, less a random jitter of up to 10 s.
    assert first["iat"] + 0.8 * TOKEN_SECONDS - KUBELET_MAX_JITTER <= second["iat"] < first["exp"], tokens
    assert second["seen_at"] < TOKEN_SECONDS - 10, tokens  # in the file before the first one ran out
    # New exchanges happened after the rotation, for the frontend and for the key service.
    assert summary["exchanged_tokens"] >= 3 and summary["key_service_exchanges"] >= 2, summary
