"""The UI gate's pure rules: which namespaces a token names for reading, and which metadata travels."""

from __future__ import annotations

import pytest

from bootstrap.cli import main
from bootstrap.servers.gate import forwarded_metadata, readable_namespaces, returned_trailers
from tests.support.bundles import make_bundle


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


# --------------------------------------------------------------------------- fuzzing what faces input

import asyncio  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
from datetime import timedelta  # noqa: E402
from pathlib import Path  # noqa: E402

from google.protobuf import json_format  # noqa: E402
from hypothesis import given, settings, strategies as st  # noqa: E402
from temporalio.api.workflowservice.v1 import GetClusterInfoResponse  # noqa: E402

from bootstrap.core.tokens import SigningKey, jwks_document, mint_token  # noqa: E402
from bootstrap.servers.auth import Authenticator  # noqa: E402
from bootstrap.servers.events import Refusal  # noqa: E402
from bootstrap.servers.gate import HOP_METADATA, ClusterInfoFile, bearer_of  # noqa: E402

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner, max_size=4),
                    max_leaves=20)
CLUSTER_INFO_FIELDS = ["clusterId", "clusterName", "serverVersion", "historyShardCount", "persistenceStore",
                       "visibilityStore", "supportedClients", "failoverVersionIncrement", "initialFailoverVersion",
                       "versionInfo"]


def _answer_and_log(content: bytes) -> tuple[bytes | None, list[dict]]:
    """ClusterInfoFile(file holding content).answer(), and the event lines it logged."""
    with tempfile.TemporaryDirectory() as directory, contextlib.redirect_stderr(io.StringIO()) as err:
        path = Path(directory) / "cluster.json"
        path.write_bytes(content)
        answer = ClusterInfoFile(path).answer()
    lines = [json.loads(line) for line in err.getvalue().splitlines()]
    assert all(line["event"] == "gate-cluster-info-unreadable" for line in lines), lines
    return answer, lines


@settings(max_examples=300)
@given(content=st.one_of(
    st.binary(max_size=300),
    JSON.map(json.dumps),
    st.dictionaries(st.sampled_from(CLUSTER_INFO_FIELDS), JSON, max_size=5).map(json.dumps),
    st.integers(1, 200_000).map(lambda depth: "[" * depth),
    st.just("x" * (ClusterInfoFile.MAX_BYTES + 1)),
))
def test_any_cluster_info_file_gives_the_message_or_one_logged_refusal(content):
    answer, lines = _answer_and_log(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    if answer is None:
        assert len(lines) == 1 and len(lines[0]["error"]) <= 203
    else:
        assert not lines
        GetClusterInfoResponse.FromString(answer)


@settings(max_examples=150)
@given(info=st.builds(
    GetClusterInfoResponse, cluster_id=st.text(max_size=40), cluster_name=st.text(max_size=40),
    server_version=st.text(max_size=20), history_shard_count=st.integers(-2**31, 2**31 - 1),
    persistence_store=st.text(max_size=20), visibility_store=st.text(max_size=20),
    supported_clients=st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=5),
    failover_version_increment=st.integers(-2**63, 2**63 - 1), initial_failover_version=st.integers(-2**63, 2**63 - 1)))
def test_what_register_namespaces_records_the_gate_answers_unchanged(info):
    """register-namespaces --cluster-info writes MessageToJson(sort_keys=True) plus a newline (ops/namespaces.py,
    commands/register_namespaces.py); the gate reads it back as the same message."""
    answer, lines = _answer_and_log((json_format.MessageToJson(info, sort_keys=True) + "\n").encode())
    assert answer is not None and not lines, lines
    assert GetClusterInfoResponse.FromString(answer) == info


METADATA_KEY = st.one_of(st.sampled_from(sorted(HOP_METADATA) + ["authorization", ":path", ":authority",
                                                                 "grpc-status-details-bin", "grpc-message"]),
                         st.text(max_size=20))
METADATA_VALUE = st.one_of(st.text(max_size=50), st.binary(max_size=50))


@settings(max_examples=500)
@given(metadata=st.one_of(st.none(), st.lists(st.tuples(METADATA_KEY, METADATA_VALUE), max_size=8)))
def test_any_metadata_is_filtered_without_a_crash(metadata):
    forwarded = forwarded_metadata(metadata)
    assert all(not k.startswith(":") and k not in HOP_METADATA for k, _ in forwarded)
    assert set(forwarded) <= set(metadata or ())
    trailers = returned_trailers(metadata)
    assert all(k == "grpc-status-details-bin" or not k.startswith(("grpc-", ":")) for k, _ in trailers)
    bearer = bearer_of(forwarded)
    assert bearer is None or (isinstance(bearer, str) and ("authorization", bearer) in forwarded)


class _KeySet:
    def __init__(self, key: SigningKey):
        self.doc = jwks_document([key])

    async def key_set(self, kid=None) -> dict:
        return self.doc


_KEY = SigningKey.generate()
_GOOD = mint_token(_KEY, role="reader", permissions=["orders:read"], issuer="https://issuer", audience="temporal",
                   lifetime=timedelta(hours=1)).encoded


@settings(max_examples=400)
@given(authorization=st.one_of(
    st.none(), st.text(max_size=200),
    st.text(max_size=200).map(lambda t: f"Bearer {t}"),
    st.tuples(st.integers(0, len(_GOOD) - 1), st.characters(codec="ascii")).map(
        lambda at: f"Bearer {_GOOD[:at[0]]}{at[1]}{_GOOD[at[0] + 1:]}"),
    st.integers(0, len(_GOOD)).map(lambda cut: f"Bearer {_GOOD[:cut]}"),
))
def test_any_authorization_header_gets_claims_or_one_401(authorization):
    """The gate's token check, which now runs before any body is read: one clear refusal, never a crash."""
    auth = Authenticator(_KeySet(_KEY), "temporal", ("https://issuer",))
    try:
        claims = asyncio.run(auth.claims(authorization))
    except Refusal as refusal:
        assert refusal.status == 401 and refusal.message in ("missing bearer token", "invalid token")
    else:
        assert authorization.split()[1] == _GOOD and claims["permissions"] == ["orders:read"]


# --------------------------------------------------------------------------- limits by construction

from bootstrap.servers.gate import Admission  # noqa: E402
from bootstrap.servers.gate_budget import MAX_REQUEST_BYTES, MIB, SLOT_BYTES, GateBudget, container_memory  # noqa: E402


def test_the_budget_at_composes_limit_holds_the_worst_case_with_headroom():
    budget = GateBudget(256 * MIB, calls=256).checked()
    from bootstrap.servers.gate_budget import BASELINE_BYTES, HEADROOM, PER_CALL_BYTES, PER_CONNECTION_BYTES

    worst = (BASELINE_BYTES + budget.connections * PER_CONNECTION_BYTES + budget.calls * PER_CALL_BYTES
             + budget.slots * SLOT_BYTES)
    assert budget.slots >= 4 and worst <= 256 * MIB * (1 - HEADROOM)
    assert MAX_REQUEST_BYTES == 4 * MIB  # the frontend's (grpc-go's default; see gate.py)
    assert dict(budget.server_options())["grpc.max_receive_message_length"] == MAX_REQUEST_BYTES


def test_too_little_memory_is_a_clear_error():
    with pytest.raises(ValueError, match="give it more memory"):
        GateBudget(128 * MIB, calls=256).checked()


def test_one_caller_gets_an_eighth_of_the_calls_and_half_the_slots():
    async def check():
        admission = Admission(calls=16, slots=4)
        assert [admission.enter(b"attacker") for _ in range(3)] == [True, True, False]
        async with admission.slot(b"attacker", 0.1) as first, admission.slot(b"attacker", 0.1) as second:
            async with admission.slot(b"attacker", 0.1) as third:
                assert (first, second, third) == (True, True, False)
            assert admission.enter(b"ui")
            async with admission.slot(b"ui", 0.1) as ui, admission.slot(b"ui", 0.1) as ui_again:
                assert ui and ui_again
        for _ in range(2):
            admission.leave(b"attacker")
        admission.leave(b"ui")
        assert admission.enter(b"attacker")

    asyncio.run(check())


@pytest.mark.parametrize("lines,files,limit", [
    ("0::/\n", {"memory.max": "268435456\n"}, 256 * MIB),  # cgroup v2, as in a compose container
    ("0::/system.slice/x\n", {"system.slice/x/memory.max": "max\n"}, None),
    ("12:memory:/job\n3:cpu:/\n", {"memory/job/memory.limit_in_bytes": "268435456"}, 256 * MIB),  # v1
    ("12:cpuacct,memory:/\n", {"memory/memory.limit_in_bytes": "9223372036854771712"}, None),  # v1 unlimited
    ("garbage\n\n::\n", {}, None), ("0::/gone\n", {}, None),
])
def test_the_containers_memory_is_read_from_its_cgroup(tmp_path, lines, files, limit):
    (tmp_path / "cgroup").write_text(lines)
    for name, text in files.items():
        (tmp_path / "fs" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fs" / name).write_text(text)
    assert container_memory(tmp_path / "cgroup", tmp_path / "fs") == limit
