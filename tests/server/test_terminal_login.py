"""`temporal-bundle login` / `logout` for a human at a terminal, for real: the real Dex (v2.45.1,
the bundle's rendered config, its public client `temporal-cli`), the real temporal-server (mTLS,
JWT, Dex's JWKS among its key sources) and the real temporal CLI 1.9.1 reading the profile.

A test plays the browser (tests/support/login_browser.Browser): it opens the URL `login` prints,
fills Dex's password form for a static user whose groups are `default:read`, and follows the
redirect to the loopback listener."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import bcrypt
import jwt
import pytest

from bootstrap.ops.login import session_path
from tests.support.binaries import temporal_cli
from tests.support.cluster import LocalCluster
from tests.support.dex import Dex
from tests.support.ldap import dex_connector, start_directory
from tests.support.login_browser import Browser
from tests.support.ports import free_port
from tests.support.waits import wait_until

PASSWORD = "ana-password-1"
USER = {"username": "ana", "email": "ana@example.com", "groups": ["default-readers"],
        "password_hash": bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()}
PROFILE = "ana"


def dex_subject(user_id: str, connector: str = "local") -> str:
    """Dex's `sub`: base64url(protobuf IDTokenSubject{user_id, conn_id}) (server/internal/codec.go);
    a bundle user's id is temporal-bundle-<username>, an LDAP user's their uid (idAttr)."""
    user = user_id.encode()
    raw = b"\x0a" + bytes([len(user)]) + user + b"\x12" + bytes([len(connector)]) + connector.encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class LoginCluster(LocalCluster):
    """The harness's cluster with the embedded Dex on loopback (started after init, before the
    server, which waits for every key source), its LDAP connector to a real slapd, and the token
    exchange trusting Dex for ana and for alice from the directory."""

    dex_port: int = 0
    exchange_port: int = 0
    dex: Dex | None = None
    directory = None

    def bundle_config(self) -> dict:
        doc = super().bundle_config()
        doc["oidc"] = {"host": "localhost", "port": self.dex_port,
                       # payments-oncall: a directory group (alice's); the mapping holds for every connector.
                       "groups": {"admins": ["temporal-system:admin"], "default-readers": ["default:read"],
                                  "payments-oncall": ["default:read"]},
                       "users": [USER]}
        if self.directory is not None:
            bind_pw = self.workdir / "ldap-bind-password"
            bind_pw.write_text(self.directory.service_password + "\n")
            doc["oidc"]["connectors"] = [dex_connector("ldap", self.directory.host, bind_pw,
                                                         ca={"rootCA": str(self.directory.ca_pem)})]
        issuer = f"https://localhost:{self.dex_port}/dex"
        doc["workload_identity"] = {
            "port": self.exchange_port, "token_lifetime": "5m", "default_bindings": False,
            "issuers": [{"name": "dex", "type": "oidc", "issuer": issuer, "audience": "temporal-cli",
                         "ca_file": str(self.bundle / "trust" / "ca.pem")}],
            "bindings": [{"issuer": "dex", "subject": dex_subject("temporal-bundle-ana"), "permissions": ["default:read"]},
                         {"issuer": "dex", "subject": dex_subject("alice", "ldap"), "permissions": ["default:read"]}],
        }
        return doc


def _start_dex(cluster: LoginCluster) -> None:
    (cluster.workdir / "dex").mkdir()
    cluster.dex = Dex(cluster.bundle, cluster.workdir / "dex", cluster.dex_port).start()


@pytest.fixture(scope="module")
def lc(tmp_path_factory):
    """Dex with the bundle's own users only."""
    yield from login_cluster(tmp_path_factory.mktemp("terminal-login"), ldap=False)


@pytest.fixture(scope="module")
def ldap_lc(tmp_path_factory):
    """Dex federating a real directory (slapd) as well."""
    yield from login_cluster(tmp_path_factory.mktemp("terminal-login-ldap"), ldap=True)


def login_cluster(workdir: Path, ldap: bool):
    cluster = LoginCluster(workdir, after_init=_start_dex)
    cluster.dex_port, cluster.exchange_port = free_port(), free_port()
    cluster.directory = start_directory() if ldap else None
    try:
        cluster.start_registered()
        argv = [sys.executable, "-m", "bootstrap", "serve-exchange", "--config", str(cluster.config_path),
                "--out", str(cluster.bundle), "--host", "127.0.0.1"]
        cluster._spawn(argv, cluster.workdir / "exchange.log", None)
        import ssl
        import urllib.request
        ctx = ssl.create_default_context(cafile=str(cluster.bundle / "trust" / "ca.pem"))
        health = f"https://localhost:{cluster.exchange_port}/healthz"
        wait_until(lambda: urllib.request.urlopen(health, context=ctx, timeout=2).status == 200, 30, "token exchange")
        # Something to list: a workflow in default (started with the client role; no worker needed).
        subprocess.run([*cluster.cli_base("client"), "workflow", "start", "-n", "default", "--type", "Nothing",
                        "--task-queue", "none", "--workflow-id", "login-visible"], check=True, capture_output=True)
        yield cluster
    finally:
        if cluster.dex:
            cluster.dex.stop()
        cluster.stop()
        if cluster.directory is not None:
            cluster.directory.stop()


@pytest.fixture
def home(tmp_path):
    """A user's home of its own: the CLI config lands in ~/.config/temporalio/temporal.toml."""
    path = tmp_path / "home"
    path.mkdir()
    return path


def user_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DISPLAY", "WAYLAND_DISPLAY", "TEMPORAL_CONFIG_FILE", "TEMPORAL_PROFILE", "XDG_CONFIG_HOME")}
    return {**env, "HOME": str(home)}


def cli_config(home: Path) -> Path:
    return home / ".config" / "temporalio" / "temporal.toml"


class Login:
    """`temporal-bundle login` running in the background, waiting for its browser."""

    def __init__(self, cluster, home: Path, *extra: str, timeout: float = 60):
        argv = [sys.executable, "-m", "bootstrap", "login", "--config", str(cluster.config_path), "--out",
                str(cluster.bundle), "--profile", PROFILE, "--no-browser", "--timeout", str(timeout),
                *extra]
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env=user_env(home))
        self.url = ""
        self.head: list[str] = []
        for line in self.process.stdout:
            self.head.append(line)
            if line.startswith("https://"):
                self.url = line.strip()
                break
        assert self.url, (self.head, self.process.stderr.read() if self.process.poll() is not None else "")
        self.query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.url).query))

    @property
    def callback(self) -> str:
        return self.query["redirect_uri"]

    def with_query(self, **changes) -> str:
        parts = urllib.parse.urlsplit(self.url)
        return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode({**self.query, **changes})))

    def result(self, timeout: float = 60) -> tuple[int, str, str]:
        out, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, "".join(self.head) + out, err


def browser_login(cluster, login: Login, url: str | None = None, user: str = USER["email"],
                  password: str = PASSWORD) -> str:
    """Ana through the connector page's "Log in with Email"; alice straight to LDAP (--connector)."""
    return Browser(cluster.bundle / "trust" / "ca.pem").log_in(url or login.url, user, password)


def logged_in(cluster, home: Path, *extra: str, user: str = USER["email"], password: str = PASSWORD) -> tuple[int, str, str]:
    login = Login(cluster, home, *extra)
    page = Browser(cluster.bundle / "trust" / "ca.pem").deliver(browser_login(cluster, login, user=user, password=password))
    assert page.status == 200, page.body
    return login.result()


def temporal(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([temporal_cli(), *args, "--profile", PROFILE], capture_output=True, text=True,
                          env=user_env(home), timeout=60)


def profile_token(home: Path) -> str:
    import tomllib
    return tomllib.loads(cli_config(home).read_text())["profile"][PROFILE]["api_key"]


def run_bundle(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bootstrap", *args, "--profile", PROFILE], capture_output=True,
                          text=True, env=user_env(home), timeout=60)


# --------------------------------------------------------------------------- the login


def test_login_gives_the_real_cli_exactly_the_users_namespace(lc, home):
    code, out, err = logged_in(lc, home)
    assert code == 0, err
    assert err == ""
    assert f"logged in as {USER['email']}" in out
    config, session = cli_config(home), session_path(cli_config(home), PROFILE)
    for path in (config, session):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    token = profile_token(home)
    assert token not in out and token not in err
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["iss"] == lc.dex.issuer and "temporal" in claims["aud"] and claims["groups"] == ["default:read"]
    assert json.loads(session.read_text())["refresh_token"]

    listed = temporal(home, "workflow", "list", "-n", "default")
    assert listed.returncode == 0, listed.stderr
    assert "login-visible" in listed.stdout
    refused = temporal(home, "workflow", "list", "-n", "other")
    assert refused.returncode != 0 and "Request unauthorized" in refused.stderr, refused
    denied = temporal(home, "workflow", "terminate", "-n", "default", "--workflow-id", "login-visible", "--reason", "x")
    assert denied.returncode != 0, denied  # read only: the frontend refuses a write

    # Run again: still valid, nothing to do, no browser.
    again = run_bundle(home, "login", "--config", str(lc.config_path), "--out", str(lc.bundle), "--no-browser")
    assert again.returncode == 0 and "still logged in" in again.stdout and "https://" not in again.stdout, again


def test_refresh_by_hand_and_when_near_expiry(lc, home):
    assert logged_in(lc, home)[0] == 0
    first = profile_token(home)
    time.sleep(1.1)  # a new iat
    refreshed = run_bundle(home, "login", "--refresh")
    assert refreshed.returncode == 0 and "refreshed as" in refreshed.stdout, refreshed
    second = profile_token(home)
    assert second != first and first not in cli_config(home).read_text()
    assert jwt.decode(second, options={"verify_signature": False})["iat"] > jwt.decode(
        first, options={"verify_signature": False})["iat"]
    assert temporal(home, "workflow", "list", "-n", "default").returncode == 0

    # A token that expires within the window (Dex's lifetime is 1 h, the window 2 h) is refreshed
    # by a plain `login`, without a browser.
    time.sleep(1.1)
    auto = run_bundle(home, "login", "--config", str(lc.config_path), "--out", str(lc.bundle), "--no-browser",
                      "--refresh-within", "2h")
    assert auto.returncode == 0 and "refreshed as" in auto.stdout and "https://" not in auto.stdout, auto
    assert profile_token(home) != second
    assert temporal(home, "workflow", "list", "-n", "default").returncode == 0


def test_logout_leaves_nothing_behind_and_keeps_other_profiles(lc, home):
    config = cli_config(home)
    config.parent.mkdir(parents=True)
    mine = '[profile.prod]\naddress = "prod.example:7233"\n'
    config.write_text(mine)
    assert logged_in(lc, home)[0] == 0
    assert config.read_text().startswith(mine)
    out = run_bundle(home, "logout")
    assert out.returncode == 0, out.stderr
    assert "not revoked" in out.stdout and "no revocation endpoint" in out.stdout
    assert config.read_text() == mine
    assert not session_path(config, PROFILE).exists()
    assert temporal(home, "workflow", "list", "-n", "default").returncode != 0  # no such profile any more

    config.unlink()
    assert logged_in(lc, home)[0] == 0
    assert run_bundle(home, "logout").returncode == 0
    assert sorted(p.name for p in config.parent.iterdir()) == []  # the file, the session: all gone


def test_the_exchange_trades_the_idp_token_for_a_bundle_token(lc, home):
    code, out, err = logged_in(lc, home, "--exchange-url", f"https://localhost:{lc.exchange_port}/token")
    assert code == 0, err
    claims = jwt.decode(profile_token(home), options={"verify_signature": False})
    assert claims["iss"] == "temporal-bundle"
    assert claims["permissions"] == ["default:read"]
    assert temporal(home, "workflow", "list", "-n", "default").returncode == 0
    assert temporal(home, "workflow", "list", "-n", "other").returncode != 0
    refreshed = run_bundle(home, "login", "--refresh")
    assert refreshed.returncode == 0, refreshed.stderr
    assert jwt.decode(profile_token(home), options={"verify_signature": False})["iss"] == "temporal-bundle"


def test_an_ldap_user_logs_in_at_the_terminal_and_gets_what_her_group_maps_to(ldap_lc, home):
    """alice is in the directory's payments-oncall and staff groups; oidc.groups maps payments-oncall
    to default:read. With oidc.connectors the frontend does not trust Dex's keys, so `login` trades
    her Dex token at the token exchange (its default URL from bundle.yaml) for a bundle token."""
    code, out, err = logged_in(ldap_lc, home, "--connector", "ldap", user="alice", password="alice-pw-1")
    assert code == 0, err
    assert "logged in as alice@example.com" in out
    claims = jwt.decode(profile_token(home), options={"verify_signature": False})
    assert claims["iss"] == "temporal-bundle" and claims["permissions"] == ["default:read"]
    listed = temporal(home, "workflow", "list", "-n", "default")
    assert listed.returncode == 0 and "login-visible" in listed.stdout, listed
    refused = temporal(home, "workflow", "list", "-n", "other")
    assert refused.returncode != 0 and "Request unauthorized" in refused.stderr, refused
    refreshed = run_bundle(home, "login", "--refresh")  # Dex re-reads LDAP, the exchange maps again
    assert refreshed.returncode == 0, refreshed.stderr
    assert jwt.decode(profile_token(home), options={"verify_signature": False})["permissions"] == ["default:read"]
    assert temporal(home, "workflow", "list", "-n", "default").returncode == 0


# --------------------------------------------------------------------------- bad input


def _deliver(lc, url: str):
    return Browser(lc.bundle / "trust" / "ca.pem").deliver(url)


def state_mismatch(lc, login):
    _deliver(lc, f"{login.callback}?code=abc&state=not-ours")


def wrong_nonce(lc, login):
    _deliver(lc, browser_login(lc, login, login.with_query(nonce="someone-elses-nonce")))


def idp_error(lc, login):
    # Dex itself refuses (a peer that does not trust this client) and redirects with error=invalid_scope.
    url = browser_login(lc, login, login.with_query(scope="openid audience:server:client_id:grafana"))
    assert "error=invalid_scope" in url
    _deliver(lc, url)


def no_code(lc, login):
    _deliver(lc, f"{login.callback}?state={urllib.parse.quote(login.query['state'])}")


def stale_port(lc, login):
    """The browser finishes an earlier login whose listener is gone: its redirect hits a closed port,
    and this login never gets its callback."""
    earlier = Login(lc, login.home_for_stale, timeout=5)
    earlier.process.kill()
    earlier.process.wait()
    with pytest.raises(OSError):
        _deliver(lc, browser_login(lc, earlier))


CASES = {"state mismatch": (state_mismatch, "state does not match"),
         "wrong nonce": (wrong_nonce, "nonce does not match"),
         "IdP error": (idp_error, "refused the login: invalid_scope"),
         "no code": (no_code, "has no code"),
         "stale port": (stale_port, "no login callback reached")}


@pytest.mark.parametrize("case", CASES)
def test_a_bad_login_is_one_error_and_writes_nothing(lc, home, tmp_path, case):
    act, message = CASES[case]
    login = Login(lc, home, timeout=8 if case == "stale port" else 60)
    login.home_for_stale = tmp_path / "other-home"
    login.home_for_stale.mkdir()
    act(lc, login)
    code, out, err = login.result()
    assert code == 1, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not cli_config(home).parent.exists() or list(cli_config(home).parent.iterdir()) == []
    assert not list(home.rglob("*.json")) and not list(home.rglob("*.toml"))


def test_a_profile_the_user_wrote_is_refused_before_the_browser(lc, home):
    config = cli_config(home)
    config.parent.mkdir(parents=True)
    config.write_text(f'[profile.{PROFILE}]\naddress = "mine:7233"\n')
    result = run_bundle(home, "login", "--config", str(lc.config_path), "--out", str(lc.bundle), "--no-browser")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("error: ") and "not written by temporal-bundle login" in result.stderr
    assert config.read_text() == f'[profile.{PROFILE}]\naddress = "mine:7233"\n'
