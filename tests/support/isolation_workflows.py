"""A workflow that puts a secret into every payload kind a history holds: input, memo (set by the
starter), signal, activity input and result, workflow result, and a failure."""

from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError


@activity.defn
async def echo(text: str) -> str:
    return f"echo {text}"


@workflow.defn
class EveryPayloadWorkflow:
    def __init__(self) -> None:
        self.notes: list[str] = []

    @workflow.run
    async def run(self, secret: str) -> str:
        await workflow.wait_condition(lambda: bool(self.notes))
        echoed = await workflow.execute_activity(echo, secret, start_to_close_timeout=timedelta(seconds=30),
                                                 retry_policy=RetryPolicy(maximum_attempts=1))
        if secret.startswith("fail"):
            raise ApplicationError(f"declined {secret}", secret, non_retryable=True)
        return f"{echoed} {self.notes[0]}"

    @workflow.signal
    def note(self, text: str) -> None:
        self.notes.append(text)
