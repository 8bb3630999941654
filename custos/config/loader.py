"""Loading the config file: YAML with line numbers, secret references, validation, revision.

``load_config(path)`` either returns a ``LoadedConfig`` or raises ``ConfigError`` carrying *every*
problem found, each with the dotted path and the line it sits on, so one run of
``custos config check`` shows all that must be fixed.

The revision is the SHA-256 of the file's canonical form: the parsed document *before* secret
references are resolved, serialised as JSON with sorted keys. Reformatting or reordering the file
keeps the revision; changing a rule changes it; rotating a secret behind ``${env:…}`` does not.
When ``cedar``/``opa`` guardrails name policy files, the revision covers their contents too
(``policy_revision``): editing a policy is a new revision.

``load_config(path, only=STORE_SECTIONS)`` reads, resolves and validates only the named sections
(the rest take their defaults, with no provider accounts): what commands that work on the store
alone (``custos init``, ``db migrate``, ``audit verify``) use, so they need no provider secret.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import ValidationError

from custos.config.refs import (
    REFERENCE,
    UnreadableFile,
    read_bounded,
    read_secret_file,
    referenced_file,
)
from custos.config.schema import UNSUPPORTED_SECTIONS, Config
from custos.config.secrets import literal_secrets

MAX_CONFIG_BYTES = 4 * 1024 * 1024
#: What a command that works on the store alone needs: where it is, and its token hash key.
STORE_SECTIONS = frozenset({"state", "identity"})

Path_ = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.path or '(top level)'}: {self.message}"


class ConfigError(Exception):
    """The file cannot be served; ``problems`` lists every reason."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    config: Config
    revision: str
    text: str
    source: str
    #: The files its ``${file:…}`` references name (what a change to must reload it).
    files: tuple[Path, ...] = ()


def load_config(
    path: str | os.PathLike[str], *, only: Collection[str] | None = None
) -> LoadedConfig:
    source = str(path)
    try:
        raw = read_bounded(Path(path), MAX_CONFIG_BYTES)
    except UnreadableFile as exc:
        raise ConfigError(source, [Problem("", None, f"cannot read file: {exc}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(source, [Problem("", None, "file is not UTF-8")]) from None
    return parse_config(text, source=source, base_dir=Path(path).resolve().parent, only=only)


def parse_config(
    text: str,
    *,
    source: str = "<config>",
    base_dir: Path | None = None,
    only: Collection[str] | None = None,
) -> LoadedConfig:
    document, lines = _parse_yaml(text, source)
    if only is not None:  # the rest is neither resolved nor checked
        document = {"providers": {}} | {
            k: v for k, v in document.items() if k in only or k == "version"
        }
    problems = _unsupported_sections(document, lines)
    problems.extend(
        Problem(dotted(path), _line_of(path, lines), message)
        for path, message in literal_secrets(document)
    )
    supported = {k: v for k, v in document.items() if k not in UNSUPPORTED_SECTIONS}
    files: list[Path] = []
    resolved = _resolve_refs(supported, (), lines, base_dir or Path.cwd(), (problems, files))
    config: Config | None = None
    references = _cross_references(supported, resolved, lines)
    problems.extend(references)
    unplaced = _accounts_without_region(resolved, lines)
    problems.extend(unplaced)
    try:
        config = Config.model_validate(resolved, context={"base_dir": base_dir or Path.cwd()})
    except ValidationError as exc:
        # The schema's own target and region checks have no location; ``references`` and
        # ``unplaced`` say the same, placed.
        problems.extend(
            p
            for p in _pydantic_problems(exc, lines)
            if not (references and _is_target_check(p)) and not (unplaced and _is_region_check(p))
        )
    if problems or config is None:
        raise ConfigError(source, sorted(problems, key=lambda p: (p.line or 0, p.path)))
    policy_digests = {g.id: s.digest for g in config.guardrails if (s := g.policy_sources)}
    files += [p for g in config.guardrails if (s := g.policy_sources) for p in s.paths]
    return LoadedConfig(
        config=config,
        revision=policy_revision(document, policy_digests),
        text=text,
        source=source,
        files=tuple(dict.fromkeys(files)),
    )


def revision_of(document: Any) -> str:
    canonical = orjson.dumps(document, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def policy_revision(document: Any, policy_digests: dict[str, str]) -> str:
    """The revision of a document whose guardrails read policy files (guardrail id → the
    digest of its files): the document's own when there are none."""
    if not policy_digests:
        return revision_of(document)
    return revision_of({"config": document, "policy_files": policy_digests})


def _parse_yaml(text: str, source: str) -> tuple[Any, dict[Path_, int]]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [_yaml_problem(exc)]) from None
    if node is None:
        raise ConfigError(source, [Problem("", None, "file is empty")])
    lines: dict[Path_, int] = {}
    problems: list[Problem] = []
    _record_lines(node, (), lines, problems, frozenset())
    if problems:
        raise ConfigError(source, problems)
    try:
        document = yaml.load(text, Loader=_Loader)  # a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError(source, [_yaml_problem(exc)]) from None
    if not isinstance(document, dict):
        raise ConfigError(source, [Problem("", 1, "the file must be a mapping of sections")])
    _check_plain(document, (), lines, problems)
    if problems:
        raise ConfigError(source, problems)
    return document, lines


def _yaml_problem(exc: yaml.YAMLError) -> Problem:
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    reason = getattr(exc, "problem", None) or str(exc)
    return Problem("", line, f"not valid YAML: {reason}")


class _Loader(yaml.SafeLoader):
    """``SafeLoader`` that reports a tagged value it cannot build (``!!float abc``) as a YAML
    error with its line, instead of letting a bare ``ValueError`` escape."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, AttributeError, OverflowError):
            tag = node.tag.rsplit(":", 1)[-1]
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value as {tag}", node.start_mark
            ) from None


def _record_lines(
    node: yaml.Node,
    path: Path_,
    lines: dict[Path_, int],
    problems: list[Problem],
    ancestors: frozenset[int],
) -> None:
    lines[path] = node.start_mark.line + 1
    if id(node) in ancestors:
        problems.append(Problem(dotted(path), lines[path], "an alias refers to itself"))
        return
    ancestors = ancestors | {id(node)}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                line = key.start_mark.line + 1
                problems.append(Problem(dotted(path), line, "keys must be strings"))
                continue
            child = (*path, key.value)
            if child in lines and child[-1] != "<<":
                problems.append(
                    Problem(
                        dotted(child),
                        key.start_mark.line + 1,
                        f"duplicate key (first at line {lines[child]})",
                    )
                )
                continue
            _record_lines(value, child, lines, problems, ancestors)
            lines[child] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_lines(item, (*path, index), lines, problems, ancestors)


_INT_RANGE = range(-(2**63), 2**64)


def _check_plain(value: Any, path: Path_, lines: dict[Path_, int], problems: list[Problem]) -> None:
    """Only JSON's kinds of value (what the revision is computed over): no binary, sets, dates."""
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str | bool | float | None) or (
                isinstance(key, int) and key in _INT_RANGE
            ):
                _check_plain(item, (*path, key), lines, problems)
            else:
                line = _line_of(path, lines)
                problems.append(Problem(dotted(path), line, "keys must be strings"))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_plain(item, (*path, index), lines, problems)
    elif isinstance(value, int) and not isinstance(value, bool) and value not in _INT_RANGE:
        problems.append(Problem(dotted(path), _line_of(path, lines), "number out of range"))
    elif not isinstance(value, str | int | float | None):
        problems.append(
            Problem(
                dotted(path),
                _line_of(path, lines),
                "must be a string, number, boolean, null, list or mapping",
            )
        )


def _line_of(path: Path_, lines: dict[Path_, int]) -> int | None:
    while path not in lines and path:
        path = path[:-1]
    return lines.get(path)


def dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _unsupported_sections(document: dict[str, Any], lines: dict[Path_, int]) -> list[Problem]:
    return [
        Problem(name, _line_of((name,), lines), "not supported yet by this version of Custos")
        for name in UNSUPPORTED_SECTIONS
        if name in document
    ]


def _cross_references(
    document: dict[str, Any], resolved: dict[str, Any], lines: dict[Path_, int]
) -> list[Problem]:
    """Virtual-model targets that name no configured model, each at its own path and line,
    reported whatever else is wrong in the file (the schema's check runs only on a valid one)."""
    providers, vms = resolved.get("providers"), resolved.get("virtual_models")
    if not isinstance(providers, dict) or not isinstance(vms, dict):
        return []
    problems = []
    for name, vm in vms.items():
        if name in providers:
            path: Path_ = ("virtual_models", name)
            problems.append(
                Problem(dotted(path), _line_of(path, lines), "has the name of a provider account")
            )
        targets = vm.get("targets") if isinstance(vm, dict) else None
        for index, target in enumerate(targets if isinstance(targets, list) else ()):
            model = target.get("model") if isinstance(target, dict) else None
            if not isinstance(model, str):
                continue
            account, _, model_name = model.partition("/")
            settings = providers.get(account)
            models = settings.get("models") if isinstance(settings, dict) else None
            if isinstance(models, dict) and model_name in models:
                continue
            path = ("virtual_models", name, "targets", index, "model")
            written = document["virtual_models"][name]["targets"][index]["model"]  # unresolved
            problems.append(
                Problem(
                    dotted(path),
                    _line_of(path, lines),
                    f"target {written!r} is not a configured provider-account/model",
                )
            )
    return problems


def _accounts_without_region(resolved: dict[str, Any], lines: dict[Path_, int]) -> list[Problem]:
    """With residency rules, each provider account without a region, at its own line."""
    providers = resolved.get("providers")
    if not resolved.get("residency") or not isinstance(providers, dict):
        return []
    return [
        Problem(
            dotted(("providers", name, "region")),
            _line_of(("providers", name), lines),
            "required when the file has residency rules: an account without a region is "
            "allowed by none (write where it serves from: eu-west-1, eu, on-prem, ...)",
        )
        for name, account in providers.items()
        if isinstance(account, dict) and not account.get("region")
    ]


def _is_region_check(problem: Problem) -> bool:
    return not problem.path and problem.message.startswith("residency rules need")


def _is_target_check(problem: Problem) -> bool:
    return not problem.path and problem.message.startswith(("virtual_models.", "virtual model "))


def _resolve_refs(
    value: Any,
    path: Path_,
    lines: dict[Path_, int],
    base_dir: Path,
    found: tuple[list[Problem], list[Path]],
) -> Any:
    """Replace ``${env:NAME}`` and ``${file:path}`` in string values; collect what is missing
    (``found[0]``) and the files read (``found[1]``)."""
    if isinstance(value, dict):
        return {k: _resolve_refs(v, (*path, k), lines, base_dir, found) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_refs(v, (*path, i), lines, base_dir, found) for i, v in enumerate(value)]
    problems, files = found
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        kind, name = match.group(1), match.group(2).strip()
        if kind not in ("env", "file"):
            problems.append(
                Problem(
                    dotted(path),
                    _line_of(path, lines),
                    f"unknown reference ${{{kind}:…}}: references are ${{env:NAME}} and "
                    "${file:path}, in lower case",
                )
            )
            return ""
        if kind == "env":
            found = os.environ.get(name)
            if found is None:
                problems.append(
                    Problem(
                        dotted(path),
                        _line_of(path, lines),
                        f"environment variable {name} is not set",
                    )
                )
                return ""
            return found
        try:
            file = referenced_file(name, base_dir)
            files.append(file)
            return read_secret_file(file)
        except UnreadableFile as exc:
            problems.append(
                Problem(
                    dotted(path),
                    _line_of(path, lines),
                    f"cannot read referenced file {name}: {exc}",
                )
            )
            return ""

    return REFERENCE.sub(substitute, value)


def _pydantic_problems(exc: ValidationError, lines: dict[Path_, int]) -> list[Problem]:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = tuple(part for part in error["loc"] if not _is_pydantic_tag(part))
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "literal_error":
            message = message.replace("Input should be", "must be")
        problems.append(Problem(dotted(loc), _line_of(loc, lines), message))
    return problems


def _is_pydantic_tag(part: str | int) -> bool:
    # pydantic inserts the key/validator names of dict and Annotated types into locations.
    return (isinstance(part, str) and part in ("[key]",)) or str(part).startswith("function-")
