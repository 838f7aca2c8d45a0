"""A real OpenLDAP directory for the tests: Debian's slapd (bookworm, 2.5), started from a generated
slapd.conf in a temporary directory, on a loopback port claimed with tests/support/ports.py.

The directory holds people under ou=people and company-style groups (groupOfNames, members by DN)
under ou=groups, among them one whose name is made of LDAP filter characters. slapd serves LDAPS
with a certificate from a CA made here (`ca_pem`), and an ldapi socket the tests use, as the
directory's root, to change memberships while Dex runs. Its stats log (`log`) records every
search filter it was sent. Nothing here skips: no slapd is an exception.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tests.support.ports import free_port_block
from tests.support.processes import stop_group
from tests.support.waits import HarnessError, wait_until

SUFFIX = "dc=example,dc=com"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
ROOT_DN = f"cn=admin,{SUFFIX}"
# The account Dex binds as to search (its bindDN / bindPW_file): read-only.
SERVICE_DN = f"cn=dex,ou=services,{SUFFIX}"
# groupOfNames needs a member: every group also lists this (no such entry), so a test may remove
# a group's last person.
PLACEHOLDER_MEMBER = f"cn=placeholder,ou=services,{SUFFIX}"
SCHEMAS = ("core", "cosine", "inetorgperson", "nis")
# A group name made of filter syntax: a connector that pasted names or DNs into a filter unescaped
# would search for every user or every group.
INJECTION_GROUP = "*)(uid=*"


@dataclass(frozen=True)
class Person:
    uid: str
    password: str
    mail: str
    name: str
    rdn: str = ""  # named by cn=<this> instead of uid=<uid>

    @property
    def dn(self) -> str:
        return f"cn={escape_dn(self.rdn)},{PEOPLE}" if self.rdn else f"uid={escape_dn(self.uid)},{PEOPLE}"


@dataclass(frozen=True)
class Group:
    cn: str
    members: tuple[str, ...]  # uids

    @property
    def dn(self) -> str:
        return f"cn={escape_dn(self.cn)},{GROUPS}"


def escape_dn(value: str) -> str:
    """An RFC 4514 attribute value (what must be escaped, and '=' and the filter characters in hex
    too, so the DN reads the same to every parser)."""
    out = []
    for i, char in enumerate(value):
        if char in ',+"\\<>;=*()' or (char == "#" and i == 0) or (char == " " and i in (0, len(value) - 1)):
            out.append("\\%02x" % ord(char))
        else:
            out.append(char)
    return "".join(out)


def ssha(password: str) -> str:
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


DEFAULT_PEOPLE = (
    Person("alice", "alice-pw-1", "alice@example.com", "Alice Payments"),
    Person("bob", "bob-pw-2", "bob@example.com", "Bob Sre"),
    Person("carol", "carol-pw-3", "carol@example.com", "Carol Nogroup"),
    # A DN holding filter syntax: her group search, (member=<her DN>), must find her groups only.
    # (Her uid is plain: Dex v2.45.1 escapes a login name twice, so a uid with filter characters
    # cannot log in at all.)
    Person("eve", "eve-pw-4", "eve@example.com", "Eve Injection", rdn="eve*)(member=*"),
    Person("mallory", "mallory-pw-5", "mallory@example.com", "Mallory Literal"),
)
DEFAULT_GROUPS = (
    Group("payments-oncall", ("alice",)),
    Group("sre", ("bob",)),
    Group(INJECTION_GROUP, ("eve",)),
    # Named like a Temporal permission: it must grant nothing unless the mapping names it.
    Group("payments:admin", ("mallory",)),
    # Everyone's: a group search that ignored the user would return it for anyone anyway.
    Group("staff", ("alice", "bob", "carol", "mallory")),
)


@dataclass
class Directory:
    """slapd on 127.0.0.1:<port> (LDAPS) with the seeded people and groups."""

    workdir: Path
    people: tuple[Person, ...] = DEFAULT_PEOPLE
    groups: tuple[Group, ...] = DEFAULT_GROUPS
    root_password: str = field(default_factory=lambda: base64.urlsafe_b64encode(os.urandom(18)).decode())
    # With '$' in it: Dex expands $NAME in connector configs unless DEX_EXPAND_ENV=false.
    service_password: str = field(default_factory=lambda: "s$$vc-$HOME-" + base64.urlsafe_b64encode(os.urandom(12)).decode())
    tls_names: tuple[str, ...] = ()  # DNS names in its certificate beyond localhost (a container's)
    process: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ca_pem(self) -> Path:
        return self.workdir / "ca.pem"

    @property
    def log(self) -> Path:
        return self.workdir / "slapd.log"

    @property
    def ldapi(self) -> str:
        return "ldapi://" + urllib.parse.quote(str(self.workdir / "ldapi"), safe="")

    def person(self, uid: str) -> Person:
        return next(p for p in self.people if p.uid == uid)

    def prepare(self) -> "Directory":
        """Its TLS pair, slapd.conf and data (loaded offline, as an operator's initial import would
        be), under workdir: what slapd needs to start, here or in a container that mounts workdir
        at the same path (slapd_args)."""
        slapd = _slapd()
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "data").mkdir(mode=0o700, exist_ok=True)
        self.port = free_port_block(1)
        self._tls()
        (self.workdir / "slapd.conf").write_text(self._config())
        seed = self.workdir / "seed.ldif"
        seed.write_text(self._seed())
        result = subprocess.run([str(Path(slapd).with_name("slapadd")), "-f", str(self.workdir / "slapd.conf"),
                                 "-l", str(seed)], capture_output=True, text=True)
        if result.returncode != 0:
            raise HarnessError(f"slapadd failed: {result.stderr[-2000:]}")
        return self

    def slapd_args(self, listen: str) -> list[str]:
        """slapd's arguments: LDAPS on `listen` (a URL's host:port; empty: every address, port 636)
        and the ldapi socket; -d 256: the foreground, each operation (the search filters) logged."""
        return ["-f", str(self.workdir / "slapd.conf"), "-h", f"ldaps://{listen}/ {self.ldapi}", "-d", "256"]

    def start(self) -> "Directory":
        self.prepare()
        self.process = subprocess.Popen([_slapd(), *self.slapd_args(self.host)], stdout=subprocess.DEVNULL,
                                        stderr=open(self.log, "ab"), start_new_session=True)
        wait_until(self._answers, 20, f"slapd on {self.host}")
        return self

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise HarnessError(f"slapd exited: {self.log.read_text(errors='replace')[-2000:]}")
        return bool(self.search(PEOPLE, "(uid=alice)", "uid", via_tls=True))

    def stop(self) -> None:
        stop_group(self.process)

    # ---- changes while running (as the directory's root, over the ldapi socket)

    def modify(self, ldif: str) -> None:
        result = subprocess.run(["ldapmodify", "-x", "-H", self.ldapi, "-D", ROOT_DN, "-w", self.root_password],
                                input=ldif, capture_output=True, text=True)
        if result.returncode != 0:
            raise HarnessError(f"ldapmodify failed: {result.stderr.strip()}")

    def remove_member(self, group: str, uid: str) -> None:
        dn = next(g.dn for g in self.groups if g.cn == group)
        self.modify(f"dn: {dn}\nchangetype: modify\ndelete: member\nmember: {self.person(uid).dn}\n")

    def add_member(self, group: str, uid: str) -> None:
        dn = next(g.dn for g in self.groups if g.cn == group)
        self.modify(f"dn: {dn}\nchangetype: modify\nadd: member\nmember: {self.person(uid).dn}\n")

    def search(self, base: str, flt: str, *attrs: str, via_tls: bool = False) -> str:
        """ldapsearch as Dex's service account (LDAPS, verifying the CA) or as root over ldapi."""
        if via_tls:
            argv = ["ldapsearch", "-x", "-LLL", "-H", f"ldaps://{self.host}", "-D", SERVICE_DN, "-w", self.service_password]
            env = {**os.environ, "LDAPTLS_CACERT": str(self.ca_pem), "LDAPTLS_REQCERT": "demand"}
        else:
            argv = ["ldapsearch", "-x", "-LLL", "-H", self.ldapi, "-D", ROOT_DN, "-w", self.root_password]
            env = dict(os.environ)
        result = subprocess.run([*argv, "-b", base, flt, *attrs], capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise HarnessError(f"ldapsearch {flt} failed: {result.stderr.strip()}")
        return result.stdout

    def filters_logged(self) -> list[str]:
        """Every search filter slapd was sent, as its stats log prints them."""
        lines = self.log.read_text(errors="replace").splitlines()
        return [line.split(' filter="', 1)[1].rsplit('"', 1)[0] for line in lines if " SRCH base=" in line and ' filter="' in line]

    # ---- generated files

    def _config(self) -> str:
        w = self.workdir
        schemas = "".join(f"include /etc/ldap/schema/{name}.schema\n" for name in SCHEMAS)
        return f"""{schemas}
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {w}/slapd.pid
argsfile {w}/slapd.args
TLSCertificateFile {w}/server.pem
TLSCertificateKeyFile {w}/server.key
TLSCACertificateFile {w}/ca.pem
TLSProtocolMin 3.3
loglevel stats

database mdb
suffix "{SUFFIX}"
rootdn "{ROOT_DN}"
rootpw {ssha(self.root_password)}
directory {w}/data
maxsize 67108864
index objectClass,uid,member eq
# Passwords: a user binds with their own; nobody reads them. Dex's account reads the rest.
access to attrs=userPassword
    by anonymous auth
    by self write
    by * none
access to *
    by dn.exact="{SERVICE_DN}" read
    by self read
    by * none
"""

    def _seed(self) -> str:
        entries = [
            f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n",
            f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n",
            f"dn: {GROUPS}\nobjectClass: organizationalUnit\nou: groups\n",
            f"dn: ou=services,{SUFFIX}\nobjectClass: organizationalUnit\nou: services\n",
            f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: dex\n"
            f"userPassword: {ssha(self.service_password)}\n",
        ]
        for p in self.people:
            entries.append(f"dn: {p.dn}\nobjectClass: inetOrgPerson\nuid: {p.uid}\ncn: {p.name}\n"
                           + (f"cn: {p.rdn}\n" if p.rdn else "") + f"sn: {p.name.split()[-1]}\n"
                           f"mail: {p.mail}\nuserPassword: {ssha(p.password)}\n")
        for g in self.groups:
            members = "".join(f"member: {dn}\n" for dn in (PLACEHOLDER_MEMBER, *(self.person(u).dn for u in g.members)))
            entries.append(f"dn: {g.dn}\nobjectClass: groupOfNames\ncn: {g.cn}\n{members}")
        return "\n".join(entries)

    def _tls(self) -> None:
        """A CA of its own and a server certificate for 127.0.0.1 (Dex checks it against rootCA)."""
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        now = datetime.now(timezone.utc) - timedelta(minutes=5)
        ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test directory CA")])
        ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
              .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + timedelta(days=2))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
              .sign(ca_key, hashes.SHA256()))
        leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "slapd")]))
                .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(now + timedelta(days=2))
                .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                            *(x509.DNSName(n) for n in ("localhost", *self.tls_names))]),
                               critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        pem = serialization.Encoding.PEM
        self.ca_pem.write_bytes(ca.public_bytes(pem))
        (self.workdir / "server.pem").write_bytes(leaf.public_bytes(pem))
        (self.workdir / "server.key").write_bytes(key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        os.chmod(self.workdir / "server.key", 0o600)


def dex_connector(ident: str, host: str, bind_pw_file, *, ca: dict, group_name_attr: str = "cn",
                  name: str = "Directory") -> dict:
    """An `oidc.connectors` entry for this directory: Dex's LDAP connector over LDAPS to `host`, the
    directory's CA as `ca` gives it ({"rootCA": a path Dex reads}, or {"rootCAData_file": a path
    read at render, which compose needs: Dex's container mounts nothing else}), Dex's read-only
    service account, people by uid, groups (groupOfNames, members by DN) named by `group_name_attr`
    (cn, or DN)."""
    return {"type": "ldap", "id": ident, "name": name, "config": {
        "host": host, **ca, "bindDN": SERVICE_DN, "bindPW_file": str(bind_pw_file),
        "userSearch": {"baseDN": PEOPLE, "filter": "(objectClass=inetOrgPerson)", "username": "uid",
                       "idAttr": "uid", "emailAttr": "mail", "nameAttr": "cn"},
        "groupSearch": {"baseDN": GROUPS, "filter": "(objectClass=groupOfNames)",
                        "userMatchers": [{"userAttr": "DN", "groupAttr": "member"}], "nameAttr": group_name_attr},
    }}


def _slapd() -> str:
    slapd = shutil.which("slapd") or ("/usr/sbin/slapd" if Path("/usr/sbin/slapd").is_file() else None)
    if slapd is None or not shutil.which("ldapmodify"):
        raise HarnessError("slapd / ldap-utils not installed (scripts/install-deps.sh installs Debian's slapd, ldap-utils)")
    return slapd


def start_directory(parent: Path | None = None) -> Directory:
    """A started Directory in a fresh temporary directory (short path: the ldapi socket's name)."""
    workdir = Path(tempfile.mkdtemp(prefix="slapd-", dir=parent))
    return Directory(workdir).start()
