"""Steps in the stock Temporal UI that the browser tests share (Playwright's sync API)."""

from __future__ import annotations

import time


def visible(locator, seconds: float = 10):
    """The UI renders some controls twice (menus, modals): the one on screen, once it is."""
    deadline = time.monotonic() + seconds
    while True:
        for item in locator.all():
            if item.is_visible():
                return item
        if time.monotonic() > deadline:
            raise AssertionError(f"Timeout: nothing visible for {locator}")
        time.sleep(0.2)


def terminate_on_the_workflow_page(page, terminate_url: str, reason: str, attempts: int = 3) -> int:
    """Terminate through the workflow page's own modal (More Actions): the status of the call the UI
    made to `terminate_url`. A confirm whose call never came back (chromium drops a request when
    Docker changes the host's interfaces beside it) is made again."""
    confirm = page.get_by_test_id("confirm-modal-button")
    for attempt in range(attempts):
        if not any(button.is_visible() for button in confirm.all()):
            page.get_by_role("button", name="More Actions").click()
            visible(page.get_by_test_id("terminate-button")).click()
            visible(page.locator("#workflow-termination-reason")).fill(reason)
        try:
            with page.expect_response(lambda r: r.url.startswith(terminate_url), timeout=10_000) as answered:
                visible(confirm).click()
            return answered.value.status
        except Exception as exc:  # playwright's TimeoutError
            if "Timeout" not in str(exc) or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")
