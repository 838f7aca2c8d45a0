"""bootstrap.client.TokenFileWatcher: a long-running client's token follows the token file. A new
token (atomic rename or rewrite) is handed to the client once; the same token again, or an
unchanged file, is not; a missing or unreadable file keeps the client's token and is looked at
again, and run() outlives both."""

from __future__ import annotations

import asyncio
import os

import pytest

from bootstrap.client import TokenFileWatcher
from bootstrap.errors import BundleError

FIRST, SECOND, THIRD = "aaa.bbb.ccc", "ddd.eee.fff", "ggg.hhh.iii"


class Client:
    def __init__(self, api_key):
        self.api_key = api_key


def replace(path, text: str) -> None:
    """What the refresher does: write beside, rename over."""
    spare = path.with_name(path.name + ".new")
    spare.write_text(text)
    os.replace(spare, path)


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "worker.jwt"
    path.write_text(FIRST + "\n")
    return path


def test_a_new_token_is_handed_over_once(token_file):
    client = Client(FIRST)
    watcher = TokenFileWatcher(client, token_file)
    assert watcher.refresh_once() is False and client.api_key == FIRST
    replace(token_file, SECOND)
    assert watcher.refresh_once() is True and client.api_key == SECOND
    assert watcher.refresh_once() is False and client.api_key == SECOND
    token_file.write_text(THIRD + "\n")  # rewritten in place
    assert watcher.refresh_once() is True and client.api_key == THIRD


def test_the_file_as_it_was_at_start_is_not_handed_over(token_file):
    client = Client("the.token.it-connected-with")
    assert TokenFileWatcher(client, token_file).refresh_once() is False
    assert client.api_key == "the.token.it-connected-with"


def test_the_same_token_in_a_new_file_is_no_change(token_file):
    client = Client(FIRST)
    watcher = TokenFileWatcher(client, token_file)
    replace(token_file, FIRST + "\n\n")
    assert watcher.refresh_once() is False and client.api_key == FIRST


def test_a_missing_file_keeps_the_token_and_its_return_is_seen(token_file):
    client = Client(FIRST)
    watcher = TokenFileWatcher(client, token_file)
    token_file.unlink()
    assert watcher.refresh_once() is False and client.api_key == FIRST
    replace(token_file, SECOND)
    assert watcher.refresh_once() is True and client.api_key == SECOND


def test_a_file_missing_at_start_is_read_when_it_appears(tmp_path):
    client, path = Client(None), tmp_path / "worker.jwt"
    watcher = TokenFileWatcher(client, path)
    assert watcher.refresh_once() is False
    replace(path, FIRST)
    assert watcher.refresh_once() is True and client.api_key == FIRST


def test_a_bad_file_is_an_error_each_time_until_it_is_replaced(token_file):
    client = Client(FIRST)
    watcher = TokenFileWatcher(client, token_file)
    replace(token_file, "not a token")
    for _ in range(2):  # looked at again, not remembered as seen
        with pytest.raises(BundleError, match="does not hold a JWT"):
            watcher.refresh_once()
        assert client.api_key == FIRST
    replace(token_file, SECOND)
    assert watcher.refresh_once() is True and client.api_key == SECOND


def test_run_outlives_a_bad_and_a_missing_file(token_file):
    client = Client(FIRST)
    watcher = TokenFileWatcher(client, token_file, interval=0.01)

    async def scenario():
        task = asyncio.create_task(watcher.run())
        try:
            for step in (lambda: replace(token_file, "garbage"), token_file.unlink, lambda: replace(token_file, SECOND)):
                step()
                await asyncio.sleep(0.1)
            assert not task.done()
        finally:
            task.cancel()

    asyncio.run(scenario())
    assert client.api_key == SECOND
