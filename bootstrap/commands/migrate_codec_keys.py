"""migrate-codec-keys: one data key ring and one key-encryption key per namespace."""

from __future__ import annotations

from ..core.backend import codec_kek
from ..core.pki import utcnow
from ..store import apply, locked
from .common import load, report, standard

HELP = "move the payload data keys to per-namespace custody: one ring file and one KEK per namespace"
DESCRIPTION = HELP + """.

codec-keys/keys.json (every namespace's ring, wrapped by one KEK) becomes codec-keys/<ns>.json,
each wrapped by its own KEK (codec-kek/<ns>.key, or a token key labelled <kek_label>:<ns> under
keys.backend pkcs11), and keys.json a manifest without key material; the bundle-wide KEK (the file
codec-kek/kek.key, or the token key <kek_label>) is removed or destroyed last, once no ring is
wrapped by it. Data keys keep their ids and bytes: every payload already written still opens. A run
killed anywhere is finished by the next one; a migrated bundle is left as it is ("already migrated,
skipped"). Restart the codec server afterwards only if it runs an older bundle version."""


def add_parser(sub, name):
    import argparse

    parser = sub.add_parser(name, help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    standard(parser, force=False)
    parser.set_defaults(run=run)


def run(args) -> int:
    config, layout = load(args)
    with locked(layout):
        custody, kek_actions = codec_kek(config, layout)
        actions = custody.migrate(layout, utcnow(), [ns.name for ns in config.namespaces])
        report(layout, apply(layout, kek_actions + actions), args.quiet)
        retired = custody.retire_single(layout)
        if retired and not (args.quiet and retired.endswith("skipped")):
            print(retired)
    return 0
