"""backup: seal the CAs, signing keys, codec keys, bundle.yaml and database dumps into one
encrypted archive, check one, restore its files, or hand one database dump to pg_restore."""

from __future__ import annotations

import argparse
import os
import sys
from itertools import chain
from pathlib import Path

from ..errors import BundleError
from ..ops.backup import (MIN_PASSPHRASE, Archive, archive_entries, check_passphrase, create_archive, held_in_token,
                          load_archive, write_dump)
from ..ops.dump_stream import file_dump, read_dump_stream
from ..ops.restore_plan import check_same_cluster, plan_config, plan_restore
from ..store import Layout, Write, apply, locked, parse_owners, read_optional, write_atomic
from .common import add_config, add_out, add_owner, report

HELP = "encrypted backup archive: create, verify, restore (bundle files), dump (one database)"
DESCRIPTION = """The disaster-recovery archive (docs/backup-and-upgrade.md), streamed: memory does
not grow with the databases. The passphrase comes
from the file named by --passphrase-file (env BACKUP_PASSPHRASE_FILE) or from the environment
variable BACKUP_PASSPHRASE; never from the command line.

  create   seal private/ (every CA and signing key, cluster.json), codec-keys/keys.json,
           exchange/signing.key (workload_identity), bundle.yaml and the database dumps (--dumps-stdin or --dump NAME=FILE) into --archive
  verify   decrypt and check the archive (and that it belongs to this bundle's cluster)
  restore  verify, then write the archive's private/, codec-keys/ and exchange key into the bundle
           (and bundle.yaml to --config-out); `init` then finds the CAs and keeps them
  dump     verify, then write one database's pg_dump (custom format) to stdout
"""
ACTIONS = ("create", "verify", "restore", "dump")


def add_parser(sub, name):
    parser = sub.add_parser(name, help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=ACTIONS)
    add_config(parser)
    add_out(parser)
    add_owner(parser)
    parser.add_argument("--archive", required=True, type=Path, help="the archive file")
    parser.add_argument("--passphrase-file", type=Path, default=os.environ.get("BACKUP_PASSPHRASE_FILE") or None,
                        help="file holding the passphrase (env BACKUP_PASSPHRASE_FILE; else env BACKUP_PASSPHRASE)")
    parser.add_argument("--file-owner", metavar="UID:GID", help="owner of the archive (create) or --config-out (restore)")
    parser.add_argument("--dumps-stdin", action="store_true", help="create: read the framed dumps `make backup` pipes")
    parser.add_argument("--dump", action="append", default=[], metavar="NAME=FILE", help="create: a pg_dump -Fc file")
    parser.add_argument("--config-out", type=Path, help="restore: write the archive's bundle.yaml here")
    parser.add_argument("--database", help="dump: which database's dump to write to stdout")
    parser.set_defaults(run=run)


def run(args) -> int:
    passphrase = read_passphrase(args.passphrase_file, minimum=MIN_PASSPHRASE if args.action == "create" else 1)
    layout = Layout(Path(args.out).resolve(), parse_owners(args.owner))
    if args.action == "create":
        return create(args, layout, passphrase)
    if args.action == "dump":
        if not args.database:
            raise BundleError("backup dump needs --database NAME")
        try:
            write_dump(args.archive, passphrase, args.database, lambda data: sys.stdout.buffer.write(data),
                       lambda archive: check_same_cluster(layout, archive))
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            raise BundleError("the reader of the dump (pg_restore?) closed the pipe before its end") from None
        return 0
    archive = load_archive(args.archive, passphrase)
    check_same_cluster(layout, archive)
    if args.action == "verify":
        print(summary(args.archive, archive))
    else:
        restore(args, layout, archive)
    return 0


def read_passphrase(path: Path | None, minimum: int) -> bytes:
    if path is not None:
        raw = read_optional(path)
        if raw is None:
            raise BundleError(f"passphrase file {path} does not exist")
        passphrase, source = raw.rstrip(b"\r\n"), f"passphrase file {path}"
    else:
        passphrase, source = os.environb.get(b"BACKUP_PASSPHRASE", b""), "BACKUP_PASSPHRASE"
        if not passphrase:
            raise BundleError("no passphrase: set BACKUP_PASSPHRASE_FILE (a file) or BACKUP_PASSPHRASE")
    check_passphrase(passphrase, source, minimum)
    return passphrase


def parse_file_owner(spec: str | None) -> tuple[int, int] | None:
    if spec is None:
        return None
    return parse_owners([f"x={spec}"])[0][1]


# --------------------------------------------------------------------------- create


def create(args, layout: Layout, passphrase: bytes) -> int:
    archive_path = args.archive.resolve()
    if archive_path.exists():
        raise BundleError(f"{archive_path} already exists; a backup never replaces another, choose a new name")
    owner = parse_file_owner(args.file_owner)
    files = [file_dump(spec) for spec in args.dump]  # each file exists before anything starts
    with locked(layout):
        entries = archive_entries(layout, Path(args.config))
    dumps = read_dump_stream(sys.stdin.buffer) if args.dumps_stdin else iter(())
    print(summary(archive_path, create_archive(archive_path, entries, chain(dumps, files), passphrase, owner)))
    return 0


# --------------------------------------------------------------------------- open, check, restore


def restore(args, layout: Layout, archive: Archive) -> None:
    with locked(layout):
        actions = plan_restore(layout, archive)
        config = plan_config(args.config_out, archive) if args.config_out else None
        if isinstance(config, Write):  # first: a host path is likelier to fail than the bundle
            write_file(config, parse_file_owner(args.file_owner))
        apply(layout, actions)
    report(layout, actions + ([config] if config else []))
    print(f"restored {len(archive.bundle_files())} bundle files; server CA sha256 {archive.server_ca_sha256}")


def write_file(action: Write, owner: tuple[int, int] | None) -> None:
    try:
        write_atomic(action.path, action.data, action.mode, owner=owner)
    except OSError as exc:
        raise BundleError(f"cannot write {action.path}: {exc.strerror or exc}") from None


def summary(path: Path, archive: Archive) -> str:
    m = archive.manifest
    databases = ", ".join(archive.databases()) or "none"
    return (f"{path}: ok; created {m.get('created')}, bundle {m.get('bundle_version')}, "
            f"{len(archive.bundle_files())} bundle files, databases: {databases}; server CA sha256 {archive.server_ca_sha256}"
            f"{_token_note(archive)}")


def _token_note(archive: Archive) -> str:
    held = held_in_token(archive)
    if not held:
        return ""
    return (f"; root keys: {len(held)} CA/signing keys are in the PKCS#11 token and NOT in this archive "
            "(it holds their labels only): back the token up with its vendor's tools")
