"""Bundles made by a real `init`, an in-process CLI runner, and a byte/mode/mtime snapshot of a
tree: what the unit, codec and export tiers build their tests on."""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from bootstrap.cli import main
from bootstrap.core.config import BundleConfig, load_config
from bootstrap.core.pki import CA, load_cert, load_private_key
from bootstrap.ops.plan import leaf_specs
from bootstrap.store import Layout

SMALL_CONFIG = "namespaces: [{name: default}, {name: other}]\n"
RSA_CONFIG = SMALL_CONFIG + "pki: {key_algorithm: rsa-3072}\njwt: {algorithm: RS256}\n"

# Every leaf a postgres-driver bundle with the default roles must hold, and its usage.
EXPECTED_LEAVES = {
    ("server", "frontend"): "server",
    ("server", "internode"): "both",
    ("server", "health"): "client",
    ("registrar", "system"): "client",
    ("jwks", "server"): "server",
    ("ui", "client"): "client",
    ("codec", "server"): "server",
    # The UI gate: a server to the UI, a client to the frontend.
    ("ui-gate", "server"): "server",
    ("ui-gate", "client"): "client",
    # HTTPS for Dex and the Web UI (oidc.enabled, the default): server-domain leaves.
    ("dex", "server"): "server",
    ("ui", "server"): "server",
    ("grafana", "server"): "server",  # Grafana (compose profile monitoring), Dex login too
    ("postgres", "server"): "server",
    ("dbclient", "temporal"): "client",
    ("clients", "system"): "client",
    ("clients", "worker"): "client",
    ("clients", "client"): "client",
}


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def out_lines(self) -> list[str]:
        return self.out.splitlines()

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()

    def assert_one_error(self, *fragments: str) -> str:
        """Exit 1, nothing on stdout, exactly one stderr line `error: ...` holding each fragment."""
        assert self.code == 1, (self.code, self.out, self.err)
        assert self.out == "", self.out
        assert len(self.err_lines) == 1, self.err
        line = self.err_lines[0]
        assert line.startswith("error: "), line
        for fragment in fragments:
            assert fragment in line, (fragment, line)
        return line


def run_main(*args) -> Run:
    """main() in-process with stdout/stderr captured (usable where capsys is not: session scope)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return Run(code, out.getvalue(), err.getvalue())


@dataclass
class Bundle:
    root: Path
    config_path: Path
    # Session bundles are read-only: cache parsed keys (loading an RSA key re-checks it, slowly).
    cached: bool = False
    config: BundleConfig = field(init=False)
    layout: Layout = field(init=False)
    _cache: dict = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self):
        self.config = load_config(self.config_path)
        self.layout = Layout(self.root)

    def _memo(self, key, make):
        if not self.cached:
            return make()
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def run(self, command: str, *extra) -> Run:
        return run_main(command, "--config", self.config_path, "--out", self.root, *extra)

    @property
    def ca(self) -> CA:
        return self._memo("ca", lambda: CA.from_pem(self.layout.ca_cert.read_bytes(), self.layout.ca_key.read_bytes()))

    @property
    def ca_file(self) -> Path:
        return self.layout.trust_bundle

    def ca_of(self, domain: str) -> CA:
        """The CA of one trust domain (server is `ca`)."""
        return self._memo(("ca", domain), lambda: CA.from_pem(*(p.read_bytes() for p in self.layout.domain_ca(domain))))

    def ca_file_of(self, domain: str) -> Path:
        return self.layout.trust_files(domain)[0]

    def leaf_paths(self, directory: str, name: str) -> tuple[Path, Path]:
        return self.layout.leaf(directory, name)

    def leaf(self, directory: str, name: str):
        def load():
            cert_path, key_path = self.leaf_paths(directory, name)
            return load_cert(cert_path.read_bytes(), str(cert_path)), load_private_key(key_path.read_bytes(), str(key_path))

        return self._memo(("leaf", directory, name), load)

    def specs(self):
        return leaf_specs(self.config)

    def jwks(self) -> dict:
        return json.loads(self.layout.jwks.read_text())

    def token(self, role: str) -> str:
        return self.layout.token(role).read_text().strip()


def make_bundle(directory: Path, config_text: str = SMALL_CONFIG, cached: bool = False) -> Bundle:
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "bundle.yaml"
    config_path.write_text(config_text)
    root = directory / "out"
    result = run_main("init", "--config", config_path, "--out", root)
    assert result.code == 0, result.err
    return Bundle(root, config_path, cached)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root: (kind, mode, bytes, mtime_ns) for files, (kind, mode) for dirs."""
    found: dict[str, tuple] = {}
    if not root.exists():
        return found
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(root))
        if stat.S_ISDIR(st.st_mode):
            found[rel] = ("dir", stat.S_IMODE(st.st_mode))
        else:
            found[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes(), st.st_mtime_ns)
    return found


def plant(path: Path, data: bytes) -> None:
    """Overwrite a file even if it is read-only (the CA key is 0400), keeping its mode."""
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644
    if path.exists():
        os.chmod(path, 0o600)
    path.write_bytes(data)
    os.chmod(path, mode)


def tree(root: Path) -> dict[str, tuple]:
    """Every path under root, links as links: (mode, mtime_ns, bytes or link target)."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            content = os.readlink(path) if os.path.islink(path) else \
                Path(path).read_bytes() if os.path.isfile(path) else None
            found[os.path.relpath(path, root)] = (info.st_mode, info.st_mtime_ns, content)
    return found
