"""Request targets and methods for the routing fuzz of the bundle's HTTPS services, and one raw
request over a fresh connection."""

from __future__ import annotations

import http.client
import urllib.parse

from hypothesis import example
from hypothesis import strategies as st

# aiohttp's parser answers 400 itself to a method it does not know, before any route: only known
# ones reach the router (CONNECT's target is an authority, not a path).
METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "PROPFIND", "MKCOL",
                           "PURGE", "SEARCH"])
# Percent-encodings aiohttp's router keeps (%2F, %25) or decodes (%64 is "d") before matching.
TRICKY = ["", ".", "..", "%2F", "%2f", "%25", "%64ecode", "decode%2F", "%2Fdecode", "x%252Fdecode", "decod%C3%A9", "~a-b_c"]
QUERIES = ["", "?x=1", "?decode", "?token"]


def raw_paths(names: list[str]):
    """Targets of up to four segments, the service's own names among them, trailing slashes and queries."""
    segments = st.sampled_from(names + TRICKY) | st.text("abcdefz019-._~:@!$&'()*+,;=", max_size=6)
    return st.builds(lambda parts, tail, query: "/" + "/".join(parts) + tail + query,
                     st.lists(segments, max_size=4), st.sampled_from(["", "/", "//", "%2F"]), st.sampled_from(QUERIES))


def decoded_path(raw_path: str) -> str:
    return urllib.parse.unquote(raw_path.split("?", 1)[0])


def send(port: int, method: str, path: str, headers: dict, body: bytes | None):
    """(response, body bytes) of one request on its own plain-HTTP connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


def with_examples(cases: list[tuple[str, str]], **fixed):
    """A Hypothesis example for each (method, path) of `cases`, the test's other arguments `fixed`:
    the edges a random draw may miss are run every time."""

    def decorate(test):
        for method, path in cases:
            test = example(method=method, path=path, **fixed)(test)
        return test

    return decorate
