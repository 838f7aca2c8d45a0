"""The server's own view of its cluster: the admin API's DescribeCluster, asked through the frontend
with the system role, read down to each service's ring.

The SDK does not carry the server's internal admin protos, so the four messages read here are
declared from server v1.32.2's own .proto files (proto/internal/temporal/server/api/
adminservice/v1/request_response.proto: DescribeClusterResponse.membership_info = 3; cluster/v1/
message.proto: MembershipInfo.rings = 3, RingInfo.role = 1 and members = 3, HostInfo.identity = 1).
Only those fields are declared; protobuf skips the others."""

from __future__ import annotations

from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

DESCRIBE_CLUSTER = "/temporal.server.api.adminservice.v1.AdminService/DescribeCluster"
_FIELD = descriptor_pb2.FieldDescriptorProto


def _message(file: descriptor_pb2.FileDescriptorProto, name: str, fields: list[tuple]) -> None:
    message = file.message_type.add(name=name)
    for field_name, number, kind, label, type_name in fields:
        field = message.field.add(name=field_name, number=number, type=kind, label=label)
        if type_name:
            field.type_name = type_name


def _describe_cluster_response():
    file = descriptor_pb2.FileDescriptorProto(name="bundle_tests_membership.proto", package="bundle_tests_membership",
                                              syntax="proto3")
    one, many = _FIELD.LABEL_OPTIONAL, _FIELD.LABEL_REPEATED
    _message(file, "HostInfo", [("identity", 1, _FIELD.TYPE_STRING, one, "")])
    _message(file, "RingInfo", [("role", 1, _FIELD.TYPE_STRING, one, ""),
                                ("members", 3, _FIELD.TYPE_MESSAGE, many, ".bundle_tests_membership.HostInfo")])
    _message(file, "MembershipInfo", [("rings", 3, _FIELD.TYPE_MESSAGE, many, ".bundle_tests_membership.RingInfo")])
    _message(file, "DescribeClusterResponse",
             [("membership_info", 3, _FIELD.TYPE_MESSAGE, one, ".bundle_tests_membership.MembershipInfo")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("bundle_tests_membership.DescribeClusterResponse"))


def rings(address: str, bundle: Path, server_name: str) -> dict[str, list[str]]:
    """Each service's ring as the frontend at `address` sees it: role -> member identities
    (host:port), asked with the system role's certificate and token."""
    credentials = grpc.ssl_channel_credentials((bundle / "trust/ca.pem").read_bytes(),
                                               (bundle / "clients/system.key").read_bytes(),
                                               (bundle / "clients/system.pem").read_bytes())
    token = (bundle / "tokens/system.jwt").read_text().strip()
    with grpc.secure_channel(address, credentials, options=[("grpc.ssl_target_name_override", server_name)]) as channel:
        answer = channel.unary_unary(DESCRIBE_CLUSTER)(b"", timeout=30, metadata=(("authorization", f"Bearer {token}"),))
    described = _describe_cluster_response().FromString(answer)
    return {ring.role: sorted(member.identity for member in ring.members) for ring in described.membership_info.rings}
