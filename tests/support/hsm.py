"""A real PKCS#11 token for every test: Debian's SoftHSM2, one token directory per test (its own
SOFTHSM2_CONF), a token initialised with softhsm2-util. A missing softhsm2 is a failure, never a
skip (scripts/install-deps.sh installs it).

The bootstrap runs as a subprocess with that SOFTHSM2_CONF: a PKCS#11 library reads its config
once per process, and a test must see the token exactly as the CLI does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

MODULE_CANDIDATES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
PIN, SO_PIN = "314159", "271828"
BASE_CONFIG = textwrap.dedent("""\
    namespaces: [{name: orders}, {name: payments}]
    jwt: {refresh_interval: 1s}
    roles:
      system: {permissions: ["temporal-system:admin"], token_lifetime: 1s}
      worker: {permissions: ["orders:write", "payments:write"], token_lifetime: 1s}
      client: {permissions: ["orders:write"], token_lifetime: 1s}
    persistence: {driver: sqlite, sqlite_path: /tmp/unused-hsm.db}
    """)


def softhsm_module() -> str:
    for path in MODULE_CANDIDATES:
        if Path(path).is_file():
            return path
    pytest.fail("softhsm2 is not installed (scripts/install-deps.sh installs it): the pkcs11 tier needs a real token")


def init_token(label: str, env: dict) -> None:
    """softhsm2-util --init-token in the first free slot of the SOFTHSM2_CONF in env."""
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", PIN, "--so-pin", SO_PIN],
                   env=env, check=True, capture_output=True)


@dataclass
class Token:
    root: Path
    module: str
    label: str = "bundle"
    env: dict = field(default_factory=dict)

    @property
    def pin_file(self) -> Path:
        return self.root / "pin"

    def init_token(self, label: str) -> None:
        init_token(label, self.env)

    def config(self, **overrides) -> str:
        keys = {"module": self.module, "token_label": self.label, "pin_file": str(self.pin_file), **overrides}
        return BASE_CONFIG + "keys:\n  backend: pkcs11\n  pkcs11: " + json.dumps(keys) + "\n"

    def cli(self, *args) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bootstrap", *map(str, args)], env=self.env,
                              capture_output=True, text=True, timeout=300)

    def single_kek_bundle(self, config: Path, out: Path) -> str:
        """The bundle at `out` back in the single-KEK layout (SINGLE_KEK_CODE); the KEK's id."""
        result = self.python(SINGLE_KEK_CODE, config, out)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def python(self, code: str, *args) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code, *map(str, args)], env=self.env,
                              capture_output=True, text=True, timeout=120)


# Turns a bundle init made under pkcs11 (one token key per namespace) into one as init made it
# before per-namespace custody: every ring in one codec-keys/keys.json wrapped by the one token key
# labelled keys.pkcs11.kek_label. Run in the token's process: argv = bundle.yaml, bundle directory.
SINGLE_KEK_CODE = """
import sys
from pathlib import Path
from bootstrap.core import backend
from bootstrap.core.codec_keys import plan_single_kek_keys
from bootstrap.core.config import load_config
from bootstrap.core.pki import utcnow
from bootstrap.store import Layout, apply
config, layout = load_config(sys.argv[1]), Layout(Path(sys.argv[2]))
for path in layout.codec_keys.parent.iterdir():
    path.unlink()
kek = backend.session(config).kek(config.keys.kek_label, create=True)
apply(layout, plan_single_kek_keys(layout, False, utcnow(), [ns.name for ns in config.namespaces], kek))
print(kek.kek_id)
"""


def softhsm_token(root: Path, label: str) -> tuple[dict, dict]:
    """A SoftHSM2 token under `root`: (SOFTHSM2_CONF environment, bundle.yaml `keys:` section)."""
    if shutil.which("softhsm2-util") is None:
        pytest.fail("softhsm2-util not found: install softhsm2 (scripts/install-deps.sh)")
    (root / "tokens").mkdir(parents=True)
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = {"SOFTHSM2_CONF": str(conf)}
    init_token(label, {**os.environ, **env})
    (root / "pin").write_text(PIN)
    keys = {"backend": "pkcs11", "pkcs11": {"module": softhsm_module(), "token_label": label, "pin_file": str(root / "pin")}}
    return env, keys
