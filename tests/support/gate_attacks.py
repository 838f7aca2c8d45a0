"""Clients that attack the UI gate: gRPC channels with a bundle certificate, header-only streams
reopened as the gate closes them, and TLS + HTTP/2 connections that never call. hold_gate runs in
a process of its own (`python -c "from tests.support.gate_attacks import hold_gate; ..."`)."""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import ssl
import time
from collections import Counter
from pathlib import Path

import grpc

from tests.support.ui_gate import FORWARDED_SERVICES

START = f"/{FORWARDED_SERVICES[0]}/StartWorkflowExecution"  # the names test_ui_gate checks against the frontend
MIB = 1024 * 1024


def channel_credentials(bundle: Path, cert: str) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials((bundle / "trust/ca.pem").read_bytes(), (bundle / f"{cert}.key").read_bytes(),
                                        (bundle / f"{cert}.pem").read_bytes())


def gate_channel(bundle: Path, address: str, cert: str, own_connection: bool = False) -> grpc.aio.Channel:
    options = [("grpc.ssl_target_name_override", "ui-gate"), ("grpc.max_send_message_length", 256 * MIB),
               ("grpc.max_receive_message_length", 256 * MIB)]
    if own_connection:
        options.append(("grpc.use_local_subchannel_pool", 1))
    return grpc.aio.secure_channel(address, channel_credentials(bundle, cert), options=options)


def hold_gate(address: str, bundle: str, cert: str, seconds: float, idle: int, streams: int, token: str) -> None:
    """In its own process: header-only streams (tokenless, and with a valid token) on as many of 100
    connections as the gate takes, reopened as the gate closes them, and `idle` TLS+HTTP/2
    connections that never call."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    bundle_path = Path(bundle)

    async def flood():
        channels = [gate_channel(bundle_path, address, cert, own_connection=True) for _ in range(100)]
        ready = await asyncio.gather(*(asyncio.wait_for(c.channel_ready(), 10) for c in channels), return_exceptions=True)
        channels = [c for c, r in zip(channels, ready) if not isinstance(r, BaseException)]  # what the gate admitted
        print(f"stream connections the gate took: {len(channels)} of 100", flush=True)
        sockets = idle_connections(address, bundle_path, cert, idle)
        print(f"idle connections the gate kept: {sum(1 for s in sockets if s is not None)} of {idle}", flush=True)
        metadata = [(), (("authorization", f"Bearer {token}"),)]
        outcomes = Counter()
        deadline = time.monotonic() + seconds

        async def keep_open(channel, n):
            while time.monotonic() < deadline:
                call = channel.stream_stream(START)(metadata=metadata[n % 2])  # headers; no body, ever
                try:
                    outcomes[(await asyncio.wait_for(call.code(), max(0.01, deadline - time.monotonic()))).name] += 1
                except asyncio.TimeoutError:
                    outcomes["still open at the end"] += 1
                    call.cancel()

        flooding = asyncio.gather(*(keep_open(c, n) for c in channels for n in range(streams)))
        try:
            await asyncio.wait_for(flooding, seconds + 15)
        except asyncio.TimeoutError:
            pass
        print(f"header-only streams, by outcome: {dict(outcomes)}", flush=True)

    asyncio.run(flood())
    os._exit(0)  # past grpc's channels and the idle sockets, whatever they still wait for


def idle_connections(address: str, bundle: Path, cert: str, count: int) -> list:
    host, port = address.split(":")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(bundle / "trust/ca.pem")
    context.load_cert_chain(bundle / f"{cert}.pem", bundle / f"{cert}.key")
    context.set_alpn_protocols(["h2"])
    held, started = [], time.monotonic()
    for _ in range(count):
        try:
            tls = context.wrap_socket(socket.create_connection((host, int(port)), 1), server_hostname="ui-gate")
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            held.append(tls)
        except OSError:  # beyond the gate's connection limit: closed as it comes (or not accepted)
            held.append(None)
    print(f"{count} idle connections opened in {time.monotonic() - started:.1f} s", flush=True)
    return held
