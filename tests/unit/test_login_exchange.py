"""The UI gate's side of the token exchange (servers/login_exchange.py): which login tokens are at
their end, so the gate tells the caller to refresh instead of exchanging them."""

from __future__ import annotations

import time

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bootstrap.servers.login_exchange import LAST_INSTANT, LoginExchange

ISSUER = "https://localhost:5556/dex"
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def bearer(**claims) -> str:
    return "Bearer " + jwt.encode({"iss": ISSUER, "sub": "alice", **claims}, "k" * 32, algorithm="HS256")


@pytest.fixture
def login():
    return LoginExchange("https://localhost:8444/token", (), ISSUER, "temporal")


@pytest.mark.parametrize("left, ending", [(-60, True), (0, True), (LAST_INSTANT - 1, True), (LAST_INSTANT + 5, False),
                                          (3600, False)])
def test_a_login_token_is_at_its_end_within_the_last_instant(login, left, ending):
    assert login.ending(login.login_claims(bearer(exp=int(time.time()) + left))) is ending


@pytest.mark.parametrize("authorization", [
    bearer(exp=int(time.time()) - 60, iss="temporal-bundle"),  # a role token: the frontend's answer stands
    bearer(),  # no exp
    bearer(exp="soon"),
    "Bearer not-a-jwt",
    "",
    None,
])
def test_anything_else_is_not(login, authorization):
    assert login.ending(login.login_claims(authorization)) is False


@given(authorization=st.one_of(st.none(), st.text(), st.binary(), st.builds(lambda t: "Bearer " + t, st.text()),
                               st.builds(lambda p: "Bearer e30." + p + ".c2ln", st.text(alphabet=B64URL))))
def test_any_header_is_an_answer_never_an_error(authorization):
    login = LoginExchange("https://localhost:8444/token", (), ISSUER, "temporal")
    assert login.ending(login.login_claims(authorization)) in (True, False)
    assert login.without_login_token((("authorization", authorization), ("x-other", "kept")))[-1] == ("x-other", "kept")
