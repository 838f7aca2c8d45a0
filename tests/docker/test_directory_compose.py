"""Company directory login as compose runs it (`--profile directory`, docs/login.md): the bundle's
Dex with the LDAP connector the bootstrap renders from bundle.yaml (its bind password and the
directory's CA read from ./secrets), and the token exchange the UI gate trades each login at.
The directory is Debian's slapd in a container (a STAND-IN for the company's, with the people and
groups of tests/support/ldap.py). Only bootstrap, Dex, the directory and the exchange start: what
the exchanged token is worth at the real Temporal server, through the gate, is
tests/server/test_ldap_permissions.py's subject; this module proves the compose wiring."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import yaml

from bootstrap.core.tokens import verify_token
from bootstrap.servers.events import Refusal
from bootstrap.servers.login_exchange import LoginExchange
from tests.support.compose_stack import ComposeStack, build_standin_images, readable_by_containers, unique_project
from tests.support.dex import Dex, LoginRefused, claims_of
from tests.support.ldap import PEOPLE, Directory, dex_connector
from tests.support.ports import free_port
from tests.support.waits import HarnessError, wait_until

pytestmark = [pytest.mark.own_stack, pytest.mark.docker, pytest.mark.timeout(900)]

DIRECTORY_HOST = "directory"
SECRETS_IN_CONTAINER = "/etc/temporal-bundle/secrets"


class DirectoryStack(ComposeStack):
    def _test_config(self) -> dict:
        doc = super()._test_config()
        doc["oidc"]["groups"]["payments-oncall"] = ["orders:write"]
        doc["oidc"]["connectors"] = [dex_connector(
            "ldap", f"{DIRECTORY_HOST}:636", f"{SECRETS_IN_CONTAINER}/ldap-bind-password",
            ca={"rootCAData_file": f"{SECRETS_IN_CONTAINER}/ldap-ca.pem"})]
        return doc


def _override(path: Path, directory: Directory) -> Path:
    """The directory's container: slapd on LDAPS (636) on the edge network, its files mounted at
    the path they were written under (slapd.conf names them)."""
    path.write_text(yaml.safe_dump({"services": {DIRECTORY_HOST: {
        "image": "${DIRECTORY_IMAGE}", "profiles": ["directory"],
        "command": directory.slapd_args(""),
        "networks": {"edge": {"aliases": [DIRECTORY_HOST]}},
        "volumes": [f"{directory.workdir}:{directory.workdir}"],
    }}}))
    return path


@pytest.fixture(scope="module")
def directory_stack(tmp_path_factory):
    images = build_standin_images()
    workdir = tmp_path_factory.mktemp("directory-compose")
    # A short path: the ldapi socket's name must fit a sockaddr_un.
    directory = Directory(Path(tmp_path_factory.mktemp("slapd")), tls_names=(DIRECTORY_HOST,)).prepare()
    secrets = workdir / "secrets"
    secrets.mkdir()
    (secrets / "ldap-ca.pem").write_bytes(directory.ca_pem.read_bytes())
    (secrets / "ldap-bind-password").write_text(directory.service_password)
    readable_by_containers(secrets)  # the bootstrap reads them as its own user
    exchange_port = free_port()
    stack = DirectoryStack(unique_project("tbdir"), workdir, images,
                           compose_files=("docker-compose.prod.yml", str(_override(workdir / "directory.yml", directory))),
                           extra_env={"BUNDLE_SECRETS_DIR": str(secrets), "EXCHANGE_PORT": str(exchange_port),
                                      "COMPOSE_PROFILES": "directory"})
    try:
        stack.make("compose-env-file")  # the published ports and Dex's host, as `make up` renders them
        stack.compose("up", "-d", "--wait", "--wait-timeout", "240", "dex", "token-exchange", DIRECTORY_HOST, timeout=400)
        # slapd has no health check: it serves once its socket answers (the ldapi one, from here).
        wait_until(lambda: _answers(directory), 60, "slapd in its container")
        bundle = workdir / "bundle-copy"
        for relative in ("dex/config.yaml", "trust/ca.pem"):
            (bundle / relative).parent.mkdir(parents=True, exist_ok=True)
            (bundle / relative).write_bytes(stack.read_bundle_file(relative))
        dex = Dex.running_at(bundle, workdir, stack.oidc_port)
        yield stack, directory, dex, exchange_port
    finally:
        log = stack.teardown("directory-compose.log")
        print("\n".join(log.read_text().splitlines()[-60:]))


def _answers(directory: Directory) -> bool:
    try:
        return "uid: alice" in directory.search(PEOPLE, "(uid=alice)", "uid")
    except HarnessError:
        return False


def exchanged(stack_fixture, id_token: str) -> str:
    """The bundle token the compose exchange gives for a Dex token, asked by the gate's own client."""
    stack, _, dex, port = stack_fixture

    async def ask() -> str:
        client = LoginExchange(f"https://localhost:{port}/token", (dex.bundle / "trust" / "ca.pem",), dex.issuer, "temporal")
        try:
            return await client.bundle_token(id_token)
        finally:
            await client.close()

    return asyncio.run(ask())


def test_an_ldap_user_logs_in_at_the_compose_dex_with_their_directory_groups(directory_stack):
    _, _, dex, _ = directory_stack
    claims = claims_of(dex.login("alice", "alice-pw-1", "ldap")["id_token"])
    assert sorted(claims["groups"]) == ["payments-oncall", "staff"]
    with pytest.raises(LoginRefused):
        dex.login("alice", "wrong password", "ldap")


def test_the_compose_exchange_maps_the_directory_group(directory_stack):
    stack, _, dex, _ = directory_stack
    token = exchanged(directory_stack, dex.login("alice", "alice-pw-1", "ldap")["id_token"])
    jwks = json.loads(stack.read_bundle_file("jwks/jwks.json"))
    claims = verify_token(token, jwks, audience="temporal")
    assert claims["permissions"] == ["orders:write"] and claims["sub"] == "user:ldap:alice"


@pytest.mark.parametrize("uid, password", [("carol", "carol-pw-3"), ("mallory", "mallory-pw-5")])
def test_no_mapped_group_no_token(directory_stack, uid, password):
    """carol is in `staff` only; mallory in a group literally named `payments:admin`."""
    _, _, dex, _ = directory_stack
    with pytest.raises(Refusal) as refused:
        exchanged(directory_stack, dex.login(uid, password, "ldap")["id_token"])
    assert refused.value.status == 403 and "oidc.groups" in refused.value.message


def test_removal_in_the_directory_is_seen_at_the_next_refresh(directory_stack):
    _, directory, dex, _ = directory_stack
    tokens = dex.login("alice", "alice-pw-1", "ldap")
    directory.remove_member("payments-oncall", "alice")
    try:
        refreshed = dex.refresh(tokens["refresh_token"])
        assert "payments-oncall" not in claims_of(refreshed["id_token"])["groups"]
        with pytest.raises(Refusal):
            exchanged(directory_stack, refreshed["id_token"])
    finally:
        directory.add_member("payments-oncall", "alice")
