"""Real Dex (the cached v2.45.1 build, scripts/build-dex.sh) on loopback with TLS, from the config
the bundle renders (ops/oidc.render_dex_config, as `init` writes it to dex/config.yaml): only its
listen addresses and its SQLite file are moved into the test's directory. And a user's login through
Dex's own pages over HTTP (authorization code: the auth request, the connector's password form, the
redirect with the code, the token endpoint), with no browser. Nothing here skips."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import ssl
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.support.binaries import built_by
from tests.support.ports import free_port
from tests.support.processes import stop_group
from tests.support.waits import HarnessError, wait_until

SCOPES = "openid email profile groups offline_access"


def dex_binary() -> Path:
    """The cached Dex build; builds it (minutes, once) when missing."""
    return built_by("build-dex.sh", "dex")


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


@dataclass
class Dex:
    bundle: Path  # the bundle directory `init` wrote (dex/config.yaml, dex/server.pem, trust/ca.pem)
    workdir: Path
    port: int
    process: subprocess.Popen | None = None
    host: str = "127.0.0.1"  # where this machine reaches it (loopback, or a Service's cluster IP)

    @property
    def issuer(self) -> str:
        return self.document["issuer"]

    @property
    def client_id(self) -> str:
        return self.document["staticClients"][0]["id"]

    @property
    def client_secret(self) -> str:
        return self.document["staticClients"][0]["secret"]

    @property
    def redirect_uri(self) -> str:
        return self.document["staticClients"][0]["redirectURIs"][0]

    @property
    def log(self) -> Path:
        return self.workdir / "dex.log"

    @classmethod
    def running_at(cls, bundle: Path, workdir: Path, port: int, host: str = "127.0.0.1") -> "Dex":
        """A Dex started elsewhere (a compose stack's container, a cluster's Deployment) from
        bundle/dex/config.yaml and reached at host:port: its logins, as with a Dex started here."""
        dex = cls(bundle, workdir, port, host=host)
        dex.document = yaml.safe_load((bundle / "dex" / "config.yaml").read_text())
        return dex

    def start(self) -> "Dex":
        rendered = yaml.safe_load((self.bundle / "dex" / "config.yaml").read_text())
        # Only what a test host must move: addresses (loopback, its own ports) and the state file.
        rendered["web"]["https"] = f"127.0.0.1:{self.port}"
        # The rendered paths are the container's (bundle_dir); the same files, here.
        rendered["web"]["tlsCert"] = str(self.bundle / "dex" / "server.pem")
        rendered["web"]["tlsKey"] = str(self.bundle / "dex" / "server.key")
        rendered["telemetry"]["http"] = f"127.0.0.1:{free_port()}"
        rendered["storage"]["config"]["file"] = str(self.workdir / "dex.db")
        self.document = rendered
        config = self.workdir / "dex.yaml"
        config.write_text(yaml.safe_dump(rendered, sort_keys=False))
        os.chmod(config, 0o600)
        # As compose runs it: connector values (a bind password with '$') are taken literally.
        env = {**os.environ, "DEX_EXPAND_ENV": "false"}
        self.process = subprocess.Popen([str(dex_binary()), "serve", str(config)], stdout=open(self.log, "ab"),
                                        stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait_until(self._ready, 30, f"Dex on {self.port}")
        return self

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise HarnessError(f"dex exited: {self.log.read_text(errors='replace')[-3000:]}")
        return self.get_json("/.well-known/openid-configuration")["issuer"] == self.issuer

    def stop(self) -> None:
        stop_group(self.process)

    # ---- HTTP to Dex (its certificate is the bundle's; the issuer's host resolves to loopback here)

    def url(self, path: str) -> str:
        return f"https://{self.host}:{self.port}{urllib.parse.urlsplit(self.issuer).path}{path}"

    def _open(self, request: urllib.request.Request):
        ctx = ssl.create_default_context(cafile=str(self.bundle / "trust" / "ca.pem"))
        ctx.check_hostname = False  # addressed by IP; the chain is still verified against the bundle's CA
        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx), NoRedirect)
        try:
            return opener.open(request, timeout=30)
        except urllib.error.HTTPError as exc:
            return exc

    def get_json(self, path: str) -> dict:
        with self._open(urllib.request.Request(self.url(path))) as response:
            return json.loads(response.read())

    def _follow(self, url: str, data: bytes | None = None):
        """One request; (status, Location or None, body)."""
        if url.startswith("/"):
            url = f"https://{self.host}:{self.port}{url}"
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if data is not None else {}
        with self._open(urllib.request.Request(url, data=data, headers=headers)) as response:
            return response.status, response.headers.get("Location"), response.read().decode(errors="replace")

    def login(self, username: str, password: str, connector: str) -> dict:
        """The authorization-code flow as a browser runs it; the token response, or LoginRefused."""
        query = urllib.parse.urlencode({"client_id": self.client_id, "redirect_uri": self.redirect_uri,
                                        "response_type": "code", "scope": SCOPES, "state": "test-state",
                                        "connector_id": connector})
        url, form_url = self.url(f"/auth?{query}"), None
        for _ in range(10):
            status, location, body = self._follow(url)
            if location and location.startswith(self.redirect_uri):
                return self._redeem(location)
            if location:
                url = location
                continue
            if status == 200 and 'name="password"' in body:
                form_url = html.unescape(re.search(r'<form method="post" action="([^"]*)"', body).group(1))
                break
            raise LoginRefused(status, _page_error(body))
        status, location, body = self._follow(form_url, urllib.parse.urlencode(
            {"login": username, "password": password}).encode())
        for _ in range(10):
            if location and location.startswith(self.redirect_uri):
                return self._redeem(location)
            if not location:
                raise LoginRefused(status, _page_error(body))
            status, location, body = self._follow(location)
        raise HarnessError("Dex redirected too often")

    def _redeem(self, location: str) -> dict:
        params = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
        if "code" not in params:
            raise LoginRefused(400, params.get("error_description", params.get("error", ["?"]))[0])
        assert params["state"] == ["test-state"]
        return self.token({"grant_type": "authorization_code", "code": params["code"][0],
                           "redirect_uri": self.redirect_uri})

    def refresh(self, refresh_token: str) -> dict:
        return self.token({"grant_type": "refresh_token", "refresh_token": refresh_token})

    def token(self, form: dict) -> dict:
        basic = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        request = urllib.request.Request(self.url("/token"), data=urllib.parse.urlencode(form).encode(),
                                         headers={"Authorization": f"Basic {basic}",
                                                  "Content-Type": "application/x-www-form-urlencoded"})
        with self._open(request) as response:
            doc = json.loads(response.read() or b"{}")
            if response.status != 200:
                raise LoginRefused(response.status, doc.get("error_description") or doc.get("error", ""))
            return doc


class LoginRefused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


def _page_error(body: str) -> str:
    found = re.search(r'class="dex-error-box"[^>]*>\s*(.*?)\s*<', body, re.S) or re.search(r"<p>(.*?)</p>", body, re.S)
    return html.unescape(found.group(1)).strip() if found else body[:200]


def claims_of(jwt_text: str) -> dict:
    """A token's payload, unverified (the tests verify through the servers that use it)."""
    payload = jwt_text.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
