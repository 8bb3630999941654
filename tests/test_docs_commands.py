"""The operations docs (docs/runbook.md, docs/threat-model.md, docs/compliance.md) name only
what exists, so that they cannot drift from the code:

- every ``custos …`` line in a fenced code block (of these docs, and of README.md and every other
  docs/*.md too) is a command of the CLI's own parser
  (``custos.cli.build_parser``, walked in process): each subcommand exists, each flag is an
  option of the command it is given to, a flag's value is one of its choices when it has choices,
  no more positionals than the command takes, and the command's required options and
  positionals are all there; a command named in running text (in backquotes) names only
  subcommands and flags that exist;
- every metric (``custos_…``) is one the gateway exports;
- every key of a ``yaml`` block, and every inline ``section.key`` of the config, is a field of the
  config schema (``custos.config.schema.Config``);
- every admin API route (``GET /admin/v1/…``) is one the admin API serves;
- every repository path in backquotes and every relative link points at a file that exists.
"""

from __future__ import annotations

import argparse
import re
import shlex
import textwrap
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from custos.cli import build_parser
from custos.config.schema import Config
from custos.http.admin import ROUTES
from tests.test_alert_rules import exported

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("docs/runbook.md", "docs/threat-model.md", "docs/compliance.md")
#: Every doc whose shell blocks show ``custos`` commands: checked for those commands only.
ALL_DOCS = ("README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")))

#: A fenced block, also indented inside a list item (the indent is removed from its lines).
_FENCE = re.compile(r"^([ \t]*)```(\w*)\n(.*?)^\1```", re.MULTILINE | re.DOTALL)
#: Where a shell line goes on past the command (a pipe, a redirection, a second command).
_SHELL_OPERATORS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "2>", "2>&1"}
#: Written where a value goes, not a value itself: checked against no choices.
_PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_|.…-]*$|^\$|^<.*>$")
#: Dotted names that start like a config section but are record fields or event types.
_NOT_CONFIG = {"audit.purge", "audit.repaired", "audit.content.erase", "audit.checkpoint",
               "audit.leaf_hash", "audit.event_id", "audit.event_type"}  # fmt: skip
_SECTIONS = ("gateway", "state", "identity", "audit", "limits")
#: Words shaped like metric names that are not metrics: PostgreSQL roles (docs/audit.md).
_NOT_METRICS = {"custos_app", "custos_retention", "custos_owner"}


def _text(doc: str) -> str:
    return (ROOT / doc).read_text(encoding="utf-8")


def _blocks(doc: str, *languages: str) -> list[str]:
    return [
        textwrap.dedent(body) for _indent, lang, body in _FENCE.findall(_text(doc))
        if lang in languages
    ]  # fmt: skip


def command_lines(doc: str) -> list[str]:
    """The ``custos …`` lines of the doc's shell and text code blocks (continuations joined,
    prompts and a ``.venv/bin/`` prefix removed)."""
    found = []
    for block in _blocks(doc, "", "sh", "bash", "console", "shell", "text"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ").removeprefix(".venv/bin/")
            if line.startswith("custos "):
                found.append(line)
    return found


def _cases() -> list[tuple[str, str]]:
    return [(doc, line) for doc in ALL_DOCS for line in command_lines(doc)]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _positionals(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a for a in parser._actions
        if not a.option_strings and not isinstance(a, argparse._SubParsersAction)
    ]  # fmt: skip


def check_command(line: str, *, complete: bool = True) -> None:
    """Walk ``line`` through the CLI's parser; raise AssertionError naming what does not exist
    (and, with ``complete``, what the command needs and was not given)."""
    words = shlex.split(line, comments=True)
    ends = [i for i, word in enumerate(words) if word in _SHELL_OPERATORS]
    tokens = [t.strip("[]") for t in words[: ends[0] if ends else None]]
    tokens = [t for t in tokens if t and t not in ("…", "...")]
    assert tokens[0] == "custos"
    parser, seen, positionals, i = build_parser(), set(), 0, 1
    while i < len(tokens):
        token = tokens[i]
        if token.startswith("-"):
            name, eq, value = token.partition("=")
            action = parser._option_string_actions.get(name)
            assert action is not None, f"{parser.prog} has no option {name}"
            seen.add(action.dest)
            if action.nargs == 0:
                i += 1
                continue
            if not eq:
                assert i + 1 < len(tokens), f"{parser.prog} {name} needs a value"
                value = tokens[i + 1]
            i += 1 if eq else 2
            if action.choices and not _PLACEHOLDER.match(value):
                assert value in action.choices, f"{parser.prog} {name}: {value!r} not a choice"
            continue
        commands = _subcommands(parser)
        if token in commands and positionals == 0:
            parser, seen = commands[token], set()
            i += 1
            continue
        assert positionals < len(_positionals(parser)), (
            f"{parser.prog} takes no argument {token!r}"
            + (f" (commands: {', '.join(commands)})" if commands else "")
        )
        positionals += 1
        i += 1
    if complete:
        _check_complete(parser, seen, positionals)


def _check_complete(parser: argparse.ArgumentParser, seen: set[str], positionals: int) -> None:
    if "help" in seen:
        return
    run = parser.get_default("run")
    assert run is not None and "usage" not in run.__code__.co_names, (
        f"{parser.prog} is a group: name one of its commands"
    )
    assert positionals == len(_positionals(parser)), f"{parser.prog}: missing arguments"
    for action in parser._actions:
        if action.required and action.option_strings:
            assert action.dest in seen, f"{parser.prog} needs {action.option_strings[0]}"
    for group in parser._mutually_exclusive_groups:
        if group.required:
            assert {a.dest for a in group._group_actions} & seen, f"{parser.prog}: needs one of"


@pytest.mark.parametrize(("doc", "line"), _cases())
def test_command_exists(doc: str, line: str) -> None:
    check_command(line)


def test_inline_commands_exist() -> None:
    """Commands named in running text (`custos audit report --group-by …`) may leave out what
    they need, but every subcommand and flag they name exists."""
    checked = 0
    for doc in DOCS:
        for span in re.findall(r"`(custos [^`|…]+)`", _text(doc)):
            check_command(span, complete=False)
            checked += 1
    assert checked


def test_every_doc_shows_commands() -> None:
    for doc in DOCS:
        assert command_lines(doc), doc
    assert set(DOCS) < set(ALL_DOCS)


def test_a_pipe_ends_the_command() -> None:
    check_command("custos audit export --event-type llm.call | wc -l")


@pytest.mark.parametrize(
    "line",
    [
        "custos audit verfy --store URL",  # a misspelt command
        "custos audit verify --store URL --public-keys VKEY",  # a misspelt flag
        "custos audit report --from D --to D --format xml",  # not a choice
        "custos audit hold set --team support",  # a required option missing
        "custos audit erase",  # one of a required group missing
        "custos tokens rotate",  # a positional missing
        "custos audit show A B",  # one positional too many
        "custos audit hold",  # a group, not a command
        "custos audit keys retire --store URL",  # --name missing
        "custos audit export --format json | jq .",  # a flag export does not have, before a pipe
    ],
)
def test_check_command_refuses(line: str) -> None:
    with pytest.raises(AssertionError):
        check_command(line)


def test_metrics_exist() -> None:
    known = exported()
    for doc in DOCS:
        named = set(re.findall(r"\bcustos_[a-z_]+\b", _text(doc))) - _NOT_METRICS
        assert named <= known, (doc, sorted(named - known))


def _model_of(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _check_value(value: Any, annotation: Any, path: str) -> None:
    """Raise AssertionError when ``value`` (YAML) holds a key the annotated type has not."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        for arg in typing.get_args(annotation):
            if arg is not type(None) and (_model_of(arg) or typing.get_origin(arg)):
                return _check_value(value, arg, path)
        return None
    if origin is list and isinstance(value, list):
        for item in value:
            _check_value(item, typing.get_args(annotation)[0], path + "[]")
    elif origin is dict and isinstance(value, dict):
        for key, item in value.items():
            _check_value(item, typing.get_args(annotation)[1], f"{path}.{key}")
    elif (model := _model_of(annotation)) is not None and isinstance(value, dict):
        for key, item in value.items():
            field = model.model_fields.get(key)
            assert field is not None, f"{path}.{key} is not a config key"
            _check_value(item, field.annotation, f"{path}.{key}")
    return None


def test_yaml_blocks_use_config_keys() -> None:
    checked = 0
    for doc in DOCS:
        for block in _blocks(doc, "yaml"):
            data = yaml.safe_load(block)
            assert isinstance(data, dict), (doc, block)
            _check_value(data, Config, "")
            checked += 1
    assert checked


def _config_path(dotted: str) -> bool:
    model: type[BaseModel] | None = Config
    for part in dotted.split("."):
        if model is None or part not in model.model_fields:
            return False
        model = _model_of(model.model_fields[part].annotation)
    return True


def test_inline_config_keys_exist() -> None:
    sections = "|".join(_SECTIONS)
    pattern = re.compile(rf"`((?:{sections})\.[a-z_][a-z_.]*[a-z_])")
    for doc in DOCS:
        for dotted in set(pattern.findall(_text(doc))) - _NOT_CONFIG:
            assert _config_path(dotted), (doc, dotted)


def test_paths_and_links_exist() -> None:
    path = re.compile(r"`((?:custos|tests|deploy|docs|bench|examples|scripts)/[\w./-]*\w)`")
    link = re.compile(r"\]\((?!https?://|#)([^)#\s]+)")
    for doc in DOCS:
        text = _text(doc)
        for name in path.findall(text):
            assert (ROOT / name).exists(), (doc, name)
        for target in link.findall(text):
            assert (ROOT / "docs" / target).resolve().exists(), (doc, target)


def test_admin_routes_exist() -> None:
    served = {(spec.method, spec.path) for spec, _handler in ROUTES}
    route = re.compile(r"\b(GET|POST|PATCH|DELETE) (/admin/v1/[\w/{}-]+)")
    named = {found for doc in DOCS for found in route.findall(_text(doc))}
    assert named, "the docs name no admin route"
    assert named <= served, sorted(named - served)
