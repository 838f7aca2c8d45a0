#!/usr/bin/env bash
# Mutation testing (mutmut 3) of the code that authorizes, checks tokens, routes the UI gate and
# bounds input: every mutant that survives is a test we are missing. Not part of `make test` or
# CI (hundreds of mutants, minutes to an hour on two cores); run it by hand after changing one of
# these files:
#
#   scripts/mutation.sh tokens|gate|wire [SCRATCH_DIR]
#
# mutmut writes a mutants/ tree, so it runs in a scratch copy of HEAD (committed code only;
# default /tmp/mutation-TARGET), never in the checkout. It runs the fast unit tests that cover the
# target (not the fuzz tests: their example budgets times hundreds of mutants is hours). Then:
#   cd SCRATCH_DIR && mutmut results          # survivors (and mutants no test reached)
#   cd SCRATCH_DIR && mutmut show NAME        # one mutant's diff
#   cd SCRATCH_DIR && mutmut run NAME         # re-run one mutant after adding a test there
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:?usage: scripts/mutation.sh tokens|gate|wire [SCRATCH_DIR]}"
case "$target" in
  tokens)
    mutate='"bootstrap/core/tokens.py", "bootstrap/servers/auth.py"'
    tests='"tests/unit/test_tokens.py", "tests/unit/test_token_checks_mutants.py", "tests/codec/test_codec_unit.py", "tests/unit/test_fetch.py"' ;;
  gate)
    mutate='"bootstrap/servers/gate.py"'
    tests='"tests/unit/test_ui_gate_rules.py", "tests/unit/test_gate_routing_mutants.py"' ;;
  wire)
    mutate='"bootstrap/servers/wire.py"'
    tests='"tests/codec/test_codec_unit.py", "tests/codec/test_wire_bounds_mutants.py"' ;;
  *) echo "error: unknown target $target (tokens, gate or wire)" >&2; exit 2 ;;
esac
python3 -c 'import mutmut' 2>/dev/null || python3 -m pip install --quiet 'mutmut>=3.3,<4'
scratch="${2:-/tmp/mutation-$target}"
rm -rf "$scratch" && mkdir -p "$scratch"
git archive HEAD | tar -x -C "$scratch"
# Only tests that exist at HEAD (a target's mutant-killing tests may not be written yet).
tests="$(cd "$scratch" && for t in ${tests//[\",]/ }; do [[ -f "$t" ]] && printf '"%s", ' "$t"; done)"
cat >>"$scratch/pyproject.toml" <<EOF

[tool.mutmut]
source_paths = ["bootstrap"]
only_mutate = [$mutate]
also_copy = ["templates", "docker", "scripts", "tools", "docs", "README.md", "Makefile", "bundle.example.yaml", "docker-compose.prod.yml", "docker-compose.pkcs11.yml"]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q"]
pytest_add_cli_args_test_selection = [$tests]
EOF
cd "$scratch"
echo "mutmut $(python3 -c 'import importlib.metadata as m; print(m.version("mutmut"))') in $scratch on $(git -C "$OLDPWD" rev-parse --short HEAD): $mutate"
start=$SECONDS
mutmut run --max-children "${MUTMUT_CHILDREN:-2}" || true  # its exit status says nothing about survivors
echo "took $((SECONDS - start)) s"
mutmut results
