"""config-schema: print bundle.schema.json, the JSON Schema of bundle.yaml that editors validate and
complete with (derived from the parser: see ops/config_schema.py). Writes nothing.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import BundleError
from ..ops.config_schema import EXAMPLE, schema_text

HELP = "print the JSON Schema of bundle.yaml (committed as bundle.schema.json)"


def add_parser(sub, name):
    parser = sub.add_parser(name, help=HELP, description=HELP + ".")
    parser.add_argument("--example", type=Path, default=EXAMPLE,
                        help="the example config with every setting shown (default: bundle.example.yaml)")
    parser.set_defaults(run=run)


def run(args) -> int:
    try:
        text = args.example.read_text(encoding="utf-8")
    except OSError as exc:
        raise BundleError(f"cannot read {args.example}: {exc.strerror or exc}") from None
    print(schema_text(text), end="")
    return 0
