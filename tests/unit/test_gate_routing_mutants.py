"""The UI gate's routing rules pinned down (mutmut 3, scripts/mutation.sh gate): which metadata goes
upstream, which trailers come back, and which namespaces a token names for reading, read from the
claim the gate is configured with. Each case kills a mutant the other gate tests let live."""

from __future__ import annotations

import pytest

from bootstrap.servers.gate import STATUS_DETAILS, forwarded_metadata, readable_namespaces, returned_trailers


@pytest.mark.parametrize("metadata", [None, ()])
def test_no_metadata_forwards_and_returns_nothing(metadata):
    assert forwarded_metadata(metadata) == () and returned_trailers(metadata) == ()


def test_pseudo_headers_and_every_hop_header_stay_behind_in_order():
    hop = [(key, "v") for key in ("user-agent", "content-type", "te", "host", "grpc-timeout", "grpc-encoding",
                                  "grpc-accept-encoding", "grpc-message-type")]
    metadata = [("x-first", "1"), (":path", "/p"), (":x", "y"), *hop, ("authorization", "Bearer t"),
                ("host-name", "kept"), ("x-last", b"\x00")]
    assert forwarded_metadata(metadata) == (("x-first", "1"), ("authorization", "Bearer t"), ("host-name", "kept"),
                                            ("x-last", b"\x00"))


def test_only_the_status_details_of_grpcs_own_trailers_come_back():
    trailers = [(":status", "200"), (":x", "y"), ("grpc-status", "7"), ("grpc-message", "no"),
                (STATUS_DETAILS, b"\x08\x07"), ("grpcx", "kept"), ("x-grpc-hint", "kept"), ("x-request", "1")]
    assert returned_trailers(trailers) == ((STATUS_DETAILS, b"\x08\x07"), ("grpcx", "kept"), ("x-grpc-hint", "kept"),
                                           ("x-request", "1"))


def test_namespaces_are_read_from_the_configured_claim():
    claims = {"roles": ["orders:read"], "groups": ["billing:read"]}
    assert readable_namespaces(claims, "roles") == ["orders"]
    assert readable_namespaces(claims) == ["billing"]


@pytest.mark.parametrize("permissions, names", [
    ([42, "orders:read"], ["orders"]),  # a malformed entry is skipped, the rest still counts
    (["orders:read:x", "orders:read"], ["orders"]),
    (["orders:Read"], ["orders"]),
    (["orders:superuser"], []),
    (["orders:worker", "orders:read"], ["orders"]),
    (["zeta:write", "alpha:admin", "mid:read"], ["alpha", "mid", "zeta"]),
])
def test_readable_namespaces(permissions, names):
    assert readable_namespaces({"groups": permissions}) == names


class Details:
    def __init__(self, method: str):
        self.method = method


@pytest.mark.parametrize("method, forwarded", [
    ("/temporal.api.workflowservice.v1.WorkflowService/StartWorkflowExecution", True),
    ("/temporal.api.operatorservice.v1.OperatorService/ListSearchAttributes", True),
    ("/grpc.health.v1.Health/Check", True),
    ("/grpc.health.v1.Health/Watch", False),
    ("/temporal.api.adminservice.v1.AdminService/DescribeCluster", False),
    ("/temporal.api.workflowservice.v1.WorkflowServiceX/StartWorkflowExecution", False),
    ("temporal.api.workflowservice.v1.WorkflowService/StartWorkflowExecution", False),
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", False),
])
def test_only_the_ui_services_and_the_health_check_are_routed(method, forwarded):
    """Anything else gets UNIMPLEMENTED from the gate itself (the handler lookup returns None)."""
    from bootstrap.servers import gate

    assert (gate._Routes(None).service(Details(method)) is not None) == forwarded
