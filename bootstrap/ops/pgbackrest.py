"""pgBackRest's configuration, planned (init plans it): the repository passphrase, generated once,
and the files the postgresql, db-backup and db-restore containers read.

- private/pgbackrest/repo-cipher.pass (0600): the repository's aes-256-cbc passphrase. In private/
  so that the sealed archive (`make backup`) carries it: a lost engine restored from the archive
  can open the repository again. Never replaced once written.
- pgbackrest/pgbackrest.conf (0600, owned by postgres through BUNDLE_OWNERS): the rendered
  configuration with that passphrase, for the containers that mount pgbackrest/ and nothing else.
- pgbackrest/db-backup.env: the schedule of the db-backup service (bundle.yaml database_backup).
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import jinja2

from ..core.config import BundleConfig
from ..core.config.database_backup import CIPHER_TYPE
from ..errors import BundleError
from ..store import KEY_MODE, Action, Layout, Skip, Write, read_optional
from .render import default_templates_dir, environment, header
from .render_plan import plan_generated

PGBACKREST_VERSION = "2.45"  # Debian bookworm's package (2.45-1), what the images install
STANZA = "temporal"
# Paths inside the containers (docker-compose.prod.yml): the repository volume, PostgreSQL's data
# directory (PGDATA) and its socket directory (a volume shared by postgresql and db-backup).
REPO_VOLUME = "/var/lib/pgbackrest"
REPO_PATH = f"{REPO_VOLUME}/repo"
LOCK_PATH = f"{REPO_VOLUME}/lock"
PG_PATH = "/var/lib/postgresql/data/pgdata"
SOCKET_PATH = "/var/run/postgresql"
OUTPUTS = {"pgbackrest.conf": "pgbackrest.conf.j2", "db-backup.env": "db-backup.env.j2"}
# What a passphrase may be in an ini value: printable, no spaces at the ends, no '#' or '=' tricks.
PASSPHRASE = re.compile(r"[A-Za-z0-9_\-.~+/]{32,256}")


def passphrase_path(layout: Layout) -> Path:
    return layout.private / "pgbackrest" / "repo-cipher.pass"


def config_dir(layout: Layout) -> Path:
    return layout.root / "pgbackrest"


def plan_passphrase(layout: Layout) -> tuple[str, list[Action]]:
    path = passphrase_path(layout)
    existing = read_optional(path)
    if existing is not None:
        value = existing.decode("ascii", "replace").strip()
        if not PASSPHRASE.fullmatch(value):
            raise BundleError(f"{layout.relative(path)} is not a repository passphrase (32-256 of A-Z a-z 0-9 _-.~+/); "
                              "restore it from the sealed archive")
        return value, [Skip(path)]
    value = secrets.token_urlsafe(48)
    return value, [Write(path, (value + "\n").encode(), KEY_MODE, "created")]


def render_pgbackrest(config: BundleConfig, passphrase: str, templates: Path | None = None) -> dict[str, str]:
    backup = config.database_backup
    values = {
        "header": header(config),
        "pgbackrest_version": PGBACKREST_VERSION,
        "backup": backup,
        "cipher_type": CIPHER_TYPE,
        "cipher_pass": passphrase,
        "repo_path": REPO_PATH,
        "lock_path": LOCK_PATH,
        "pg_path": PG_PATH,
        "socket_path": SOCKET_PATH,
        "stanza": STANZA,
        "full_every_seconds": int(backup.full_every.total_seconds()),
        "diff_every_seconds": int(backup.diff_every.total_seconds()),
    }
    env = environment(templates or default_templates_dir())
    try:
        return {name: env.get_template(template).render(values) for name, template in OUTPUTS.items()}
    except jinja2.TemplateError as exc:
        raise BundleError(f"template {exc}") from None


def plan_pgbackrest(config: BundleConfig, layout: Layout, force: bool, templates: Path | None = None) -> list[Action]:
    passphrase, actions = plan_passphrase(layout)
    for name, text in render_pgbackrest(config, passphrase, templates).items():
        actions.append(plan_generated(config_dir(layout) / name, text.encode(), KEY_MODE, force))
    return actions
