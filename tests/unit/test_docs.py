"""The README and docs/ say only what exists: make targets, CLI commands and flags, bundle.yaml keys,
repository paths, links and anchors.

What is checked, precisely (code = an inline `span`, or a line of a fenced block that is not YAML
or Python; HTML comments are ignored):
- `make [VAR=value ...] TARGET` in code: TARGET is a rule of the Makefile.
- A CLI command in code: after `temporal-bundle`, `python -m bootstrap`, or `bootstrap` in a
  `docker compose ... run` line; a code line or span that starts with a command's name; a span
  that is one word `serve-*`, `generate-*`, `mint-*`, `render-*`, `register-*` or `show-*`. The
  command must exist, and every `--flag` after it (up to `|`, `;`, `&&` or `#`) must be one of its
  options (or of its subcommands'). A span that starts with `--flag` names an option of some
  command, or one of FOREIGN_FLAGS (other programs' options the docs mention).
- bundle.yaml keys: every key of a ```yaml block (unless its first line is `# file: <other file>`),
  and every span `section.key[.key...]` or `section.key: value` whose first segment is a top-level
  section (file and domain names like `cluster.json`, `kubernetes.io` excepted), must be a key the
  config parser accepts (tests/support/config_keys.py learns them from the parser).
- Repository paths in spans (starting with tests/, scripts/, benchmarks/, bootstrap/, docker/,
  templates/, tools/, docs/; no placeholders or wildcards) exist.
- Every relative link resolves to a file, and its #anchor to a heading of that file (GitHub's slugs).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import yaml

from bootstrap.cli import build_parser
from bootstrap.commands import COMMANDS
from tests.support.config_keys import EXAMPLE, accepted_keys, generic, keys_present
from tests.support.paths import REPO

DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "RESULTS.md"]
# Options of other programs named in the docs: the temporal CLI, docker compose, Alertmanager.
FOREIGN_FLAGS = {"--api-key", "--tls-server-name", "--profile", "--cluster.listen-address", "--no-hooks"}
COMMAND_WORD = re.compile(r"^(serve|generate|mint|render|register|show)-[a-z-]+$")
NOT_KEYS = re.compile(r"\.(json|ya?ml|pem|key|jwt|md|py|io|com|org)$")
REPO_DIRS = ("tests/", "scripts/", "benchmarks/", "bootstrap/", "docker/", "templates/", "tools/", "docs/")
SEPARATORS = {"|", "||", "&&", ";"}


@dataclass
class Doc:
    path: Path
    prose: str  # the text outside fenced blocks, HTML comments removed
    spans: list[str]  # inline code, whitespace collapsed
    blocks: list[tuple[str, list[str]]]  # (info string, lines without the fence's indentation)

    @classmethod
    def parse(cls, path: Path, text: str | None = None) -> "Doc":
        text = re.sub(r"<!--.*?-->", "", path.read_text() if text is None else text, flags=re.S)
        prose, blocks, fence = [], [], None
        for line in text.splitlines():
            opening = re.match(r"^(\s*)```(.*)$", line)
            if fence is None and opening:
                fence = (len(opening.group(1)), opening.group(2).strip(), [])
            elif fence is not None and line.strip() == "```":
                blocks.append((fence[1], fence[2]))
                fence = None
            elif fence is not None:
                fence[2].append(line[fence[0]:])
            else:
                prose.append(line)
        prose_text = "\n".join(prose)
        spans = [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", prose_text)]
        return cls(path, prose_text, spans, blocks)

    def code(self) -> list[str]:
        """Spans and the lines of blocks that hold commands."""
        lines = [line for info, body in self.blocks if info not in ("yaml", "python") for line in body]
        return self.spans + lines


def docs() -> list[Doc]:
    return [Doc.parse(path) for path in DOC_FILES]


def doc_id(doc: Doc) -> str:
    return str(doc.path.relative_to(REPO))


# --------------------------------------------------------------------------- make targets


@cache
def make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", (REPO / "Makefile").read_text(), re.M))


def make_problems(doc: Doc) -> list[str]:
    named = {m.group(1) for code in doc.code()
             for m in re.finditer(r"(?<![\w-])make\s+(?:[A-Z_][A-Z0-9_]*=\S*\s+)*([a-z][\w.-]*)", code)}
    return [f"make {target}: no such Makefile target" for target in sorted(named - make_targets())]


# --------------------------------------------------------------------------- CLI commands and flags


@cache
def command_flags() -> dict[str, frozenset[str]]:
    flags = {}
    for name in COMMANDS:
        parser = build_parser([name])
        flags[name] = frozenset(_options(_subparser(parser, name)))
    return flags


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _options(parser: argparse.ArgumentParser):
    for action in parser._actions:
        yield from (o for o in action.option_strings if o.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _options(child)


def command_mentions(code: str) -> list[tuple[str, list[str]]]:
    """(command, --flags after it) for each CLI command named in one span or line."""
    tokens = code.split()
    found = []
    for i, token in enumerate(tokens):
        if token == "temporal-bundle":
            at = i + 1
        elif tokens[i:i + 3] in (["python", "-m", "bootstrap"], ["python3", "-m", "bootstrap"]):
            at = i + 3
        elif token == "bootstrap" and "compose" in tokens[:i] and "run" in tokens[:i]:
            at = i + 1
        elif i == 0 and (token in COMMANDS or (len(tokens) == 1 and COMMAND_WORD.match(token))):
            at = 0
        else:
            continue
        if at < len(tokens) and not _placeholder(tokens[at]):
            found.append((tokens[at], _flags(tokens[at + 1:])))
    return found


def _placeholder(word: str) -> bool:
    return word.startswith(("<", "-", "$")) or word.isupper()


def _flags(tokens: list[str]) -> list[str]:
    flags = []
    for token in tokens:
        if token in SEPARATORS or token.startswith("#"):
            break
        token = token.strip("[](){}\\\"'")
        if token.startswith("--"):
            flags.append(token.split("=", 1)[0])
    return flags


def cli_problems(doc: Doc) -> list[str]:
    problems, everyone = [], set().union(*command_flags().values()) | FOREIGN_FLAGS
    for code in doc.code():
        for command, flags in command_mentions(code):
            if command not in command_flags():
                problems.append(f"{code!r}: no command {command!r}")
                continue
            problems += [f"{code!r}: {command} has no option {f}" for f in flags if f not in command_flags()[command]]
    for span in doc.spans:
        if span.startswith("--") and span.split()[0].split("=")[0] not in everyone:
            problems.append(f"{span!r}: no command has this option")
    return problems


# --------------------------------------------------------------------------- bundle.yaml keys


def key_problems(doc: Doc) -> list[str]:
    accepted = accepted_keys()
    sections = {key for key in accepted if "." not in key}
    problems = []
    for info, body in doc.blocks:
        if info != "yaml" or (body and body[0].lstrip().startswith("# file:")):
            continue
        data = yaml.safe_load("\n".join(body))
        problems += [f"yaml block: {path} is not a bundle.yaml key" for path in
                     sorted({generic(p) for p in keys_present(data)} - accepted)]
    for span in doc.spans:
        path = span.split(":", 1)[0]
        if re.match(r"^[a-z_]+(\.[\w-]+)+$", path) and path.split(".")[0] in sections and not NOT_KEYS.search(path):
            if generic(path) not in accepted:
                problems.append(f"{span!r}: {path} is not a bundle.yaml key")
    return problems


# --------------------------------------------------------------------------- paths and links


def path_problems(doc: Doc) -> list[str]:
    named = {span for span in doc.spans if span.startswith(REPO_DIRS) and re.match(r"^[\w./-]+$", span)}
    return [f"{p}: no such file or directory" for p in sorted(named) if not (REPO / p).exists()]


def slugs(doc: Doc) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as '-', repeats numbered."""
    found, counts = set(), {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", doc.prose, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        n = counts.get(slug, 0)
        counts[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def link_problems(doc: Doc) -> list[str]:
    problems = []
    prose = re.sub(r"`[^`]*`", "", doc.prose)
    for target in re.findall(r"\]\(([^)\s]+)\)", prose):
        if re.match(r"^[a-z]+:", target):
            continue
        path_part, _, anchor = target.partition("#")
        path = (doc.path.parent / path_part).resolve() if path_part else doc.path
        if not path.exists():
            problems.append(f"{target}: no such file")
        elif anchor and anchor not in slugs(Doc.parse(path)):
            problems.append(f"{target}: no heading #{anchor} in {path.name}")
    return problems


# --------------------------------------------------------------------------- the checks


@pytest.mark.parametrize("check", [make_problems, cli_problems, key_problems, path_problems, link_problems],
                         ids=lambda c: c.__name__)
@pytest.mark.parametrize("doc", docs(), ids=doc_id)
def test_docs_name_only_what_exists(doc, check):
    assert check(doc) == []


def test_every_docs_page_is_linked_from_the_readme():
    readme = Doc.parse(REPO / "README.md").prose
    unlinked = [p.name for p in DOC_FILES[1:] if str(p.relative_to(REPO)) not in readme]
    assert unlinked == []


def test_the_readme_stays_a_front_door():
    assert len((REPO / "README.md").read_text().splitlines()) <= 300


def test_the_readme_set_up_is_make_up_and_the_ci_command():
    """The two set-up commands: `make up` runs the cluster, `make test` is exactly what CI runs."""
    readme = Doc.parse(REPO / "README.md")
    commands = [line.split("#")[0].strip() for line in readme.blocks[0][1]]
    assert commands == ["make up", "make test"]
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd ", "export "))]
    assert ci == ["make test"]

def test_the_example_config_points_to_pages_that_exist():
    pages = set(re.findall(r"docs/[\w-]+\.md", EXAMPLE.read_text()))
    assert pages and all((REPO / page).exists() for page in pages)


# --------------------------------------------------------------------------- the checks can fail


def sample(text: str) -> Doc:
    return Doc.parse(REPO / "docs" / "sample.md", text)


@pytest.mark.parametrize("check, text", [
    (make_problems, "Run `make upp` first."),
    (make_problems, "```sh\nIMAGES_ENV=x make standin-image\n```"),
    (cli_problems, "`temporal-bundle mint-token --role worker`"),
    (cli_problems, "`rotate --kind certs --wiat`"),
    (cli_problems, "```sh\ncheck-expiry --out certs --warning 14d\n```"),
    (cli_problems, "`serve-codecs`"),
    (cli_problems, "`--probe-adress HOST:PORT`"),
    (key_problems, "```yaml\nworkload_identity:\n  token_lifetme: 10m\n```"),
    (key_problems, "Set `oidc.ui_public_hots` to the UI's name."),
    (key_problems, "`keys.backend: pkcs11` with `keys.pkcs11.pin`"),
    (path_problems, "`tests/server/test_trust_domain.py`"),
    (link_problems, "[login](login.md#web-ui-login-and-sso-typo)"),
    (link_problems, "[nothing](no-such-page.md)"),
])
def test_a_mistake_is_found(check, text):
    assert check(sample(text)) != []


@pytest.mark.parametrize("check, text", [
    (make_problems, "`IMAGES_ENV=build/standin-images.env make up`, then `make rotate KIND=ca`"),
    (cli_problems, "`docker compose -f x.yml run --rm -e A bootstrap backup verify|restore --archive F`"),
    (cli_problems, "`temporal workflow list --tls-server-name temporal --api-key X`"),
    (key_problems, "`cluster.json`, `kubernetes.io`, `roles.reader.permissions`, `oidc.groups.admins`"),
    (link_problems, "[login](login.md#a-company-idp-without-dex-oidcexternal)"),
])
def test_what_exists_passes(check, text):
    assert check(sample(text)) == []
