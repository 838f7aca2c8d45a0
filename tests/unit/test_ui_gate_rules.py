"""The UI gate's pure rules: which namespaces a token names for reading, and which metadata travels."""

from __future__ import annotations

import pytest

from bootstrap.cli import main
from bootstrap.servers.gate import forwarded_metadata, readable_namespaces, returned_trailers
from tests.unit.conftest import make_bundle


@pytest.mark.parametrize("permissions,names", [
    (["orders:read"], ["orders"]),
    (["orders:write", "billing:admin", "orders:read"], ["billing", "orders"]),
    (["orders:worker"], []),  # worker is below read: the frontend refuses DescribeNamespace to it
    (["temporal-system:read"], []),  # not a namespace; such a caller gets the frontend's own answers
    (["temporal-system:worker", "orders:worker"], []),
    (["orders"], []), (["a:b:read"], []), ([":read"], []), ([42, None], []),
])
def test_readable_namespaces(permissions, names):
    assert readable_namespaces({"groups": permissions}) == names


def test_a_token_without_the_permissions_claim_names_nothing():
    assert readable_namespaces({"sub": "x"}) == [] and readable_namespaces({"groups": "orders:read"}) == []


def test_hop_metadata_stays_and_the_callers_own_travels():
    metadata = (("authorization", "Bearer t"), ("user-agent", "grpc-go"), (":authority", "ui-gate"),
                ("client-name", "temporal-ui"), ("te", "trailers"), ("grpc-timeout", "5S"))
    assert forwarded_metadata(metadata) == (("authorization", "Bearer t"), ("client-name", "temporal-ui"))


def test_only_the_status_details_trailer_of_grpcs_own_comes_back():
    trailers = (("grpc-status-details-bin", b"\x08\x07"), ("grpc-message", "x"), ("x-request", "1"))
    assert returned_trailers(trailers) == (("grpc-status-details-bin", b"\x08\x07"), ("x-request", "1"))


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    made = make_bundle(tmp_path)
    config, bundle = made.config_path, made.root
    capsys.readouterr()
    code = main(["serve-ui-gate", "--config", str(config), "--out", str(bundle), "--jwks-url", "https://jwks:8443/jwks.json",
                 "--cluster-info", str(tmp_path / "cluster.json"), "--max-concurrent-calls", "0"])
    assert code == 1 and capsys.readouterr().err == "error: --max-concurrent-calls must be at least 1\n"


def test_a_missing_certificate_is_a_one_line_error(tmp_path, capsys):
    made = make_bundle(tmp_path)
    config, bundle = made.config_path, made.root
    (bundle / "ui-gate" / "server.key").unlink()
    capsys.readouterr()
    code = main(["serve-ui-gate", "--config", str(config), "--out", str(bundle), "--jwks-url", "https://jwks:8443/jwks.json",
                 "--cluster-info", str(tmp_path / "cluster.json"), "--port", "0"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: cannot start the UI gate") and err.count("\n") == 1, err


def test_the_gate_starts_without_the_http_stack():
    """aiohttp is only needed to fetch a key set (a namespace-only user's first token): importing
    the gate, its authenticator and its command must not load it (it costs the gate's start)."""
    import subprocess
    import sys

    probe = ("import sys, bootstrap.cli, bootstrap.servers.gate, bootstrap.commands.serve_ui_gate; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'aiohttp'))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"
