"""The registration job reaches the frontend as soon as its health check passes (it starts with
the server): UNAVAILABLE then means 'still starting' and is retried until the job's deadline;
every other refusal ends the job at once."""

from __future__ import annotations

import asyncio
import time

import pytest
from temporalio.service import RPCError, RPCStatusCode

from bootstrap.ops.namespaces import BRISK_POLL_S, while_starting


def _failing(statuses: list[RPCStatusCode], result="registered"):
    calls = []

    async def call():
        calls.append(time.monotonic())
        if len(calls) <= len(statuses):
            raise RPCError("refused", statuses[len(calls) - 1], b"")
        return result

    return call, calls


def test_unavailable_is_retried_until_the_call_succeeds():
    call, calls = _failing([RPCStatusCode.UNAVAILABLE, RPCStatusCode.UNAVAILABLE])
    assert asyncio.run(while_starting(call, time.monotonic() + 30)) == "registered"
    assert len(calls) == 3


@pytest.mark.parametrize("status", [RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNAUTHENTICATED,
                                    RPCStatusCode.INVALID_ARGUMENT, RPCStatusCode.NOT_FOUND])
def test_any_other_refusal_ends_at_once(status):
    call, calls = _failing([status])
    with pytest.raises(RPCError) as refused:
        asyncio.run(while_starting(call, time.monotonic() + 30))
    assert refused.value.status == status and len(calls) == 1


def test_unavailable_past_the_deadline_is_final():
    call, calls = _failing([RPCStatusCode.UNAVAILABLE] * 100)
    with pytest.raises(RPCError) as refused:
        asyncio.run(while_starting(call, time.monotonic() + 0.6))
    assert refused.value.status == RPCStatusCode.UNAVAILABLE
    assert 2 <= len(calls) <= 0.6 / BRISK_POLL_S + 2  # one try per interval, then it gives up
