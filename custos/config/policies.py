"""Policy files of the ``cedar`` and ``opa`` guardrails: read, checked and fingerprinted with the
config that names them (docs/policy.md).

A guardrail's files are read when the config is loaded (paths relative to the config file's
directory, which they must stay inside, as ``${file:…}`` references) and checked there: Cedar
policies must parse, and validate against the ``schema`` when one is given; Rego modules must
compile with the guardrail's ``query``. A file that fails is a problem of the config, so
``custos config check`` reports it and a reload refuses it (the serving revision stays).

The files' contents are part of the config revision (``PolicySources.digest``), and their paths
are watched with the config file: editing a policy is a new revision, applied on reload.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import threading
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from custos.config.refs import (
    MAX_SECRET_FILE_BYTES,
    UnreadableFile,
    read_bounded,
    referenced_file,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

#: The watcher re-reads referenced files up to this bound (custos.config.watch).
MAX_POLICY_FILE_BYTES = MAX_SECRET_FILE_BYTES
DEFAULT_QUERY = "data.custos.allow"
#: ``data.<package path>.<rule>``: what an OPA query may be (the REST path is derived from it).
QUERY = re.compile(r"^data(\.[A-Za-z_][A-Za-z0-9_]*)+$")


class PolicyProblem(ValueError):
    """Why a guardrail's policy files cannot be served (never any of their content beyond the
    offending line's position)."""


@dataclass(frozen=True, slots=True)
class PolicyFile:
    #: As written in the config (what decisions and messages name).
    name: str
    path: Path
    text: str


@dataclass(frozen=True, slots=True)
class PolicySources:
    """One guardrail's policy files, as read and checked."""

    language: str  # "cedar" | "rego"
    files: tuple[PolicyFile, ...]
    schema: PolicyFile | None = None
    #: Cedar: a label per policy, in the order of the concatenated files (``@id`` or
    #: ``<file>#<n>``), and its effect (``permit`` or ``forbid``).
    labels: tuple[str, ...] = ()
    effects: tuple[str, ...] = ()

    @property
    def digest(self) -> str:
        """SHA-256 over every file's name and content: the guardrail's policy revision."""
        digest = hashlib.sha256()
        for file in (*self.files, *((self.schema,) if self.schema else ())):
            for part in (file.name.encode(), file.text.encode()):
                digest.update(len(part).to_bytes(8, "big") + part)
        return digest.hexdigest()

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(f.path for f in (*self.files, *((self.schema,) if self.schema else ())))

    @property
    def text(self) -> str:
        return "\n".join(f.text for f in self.files)


def read_policy_file(name: str, base_dir: Path) -> PolicyFile:
    try:
        path = referenced_file(name, base_dir)
        data = read_bounded(path, MAX_POLICY_FILE_BYTES)
    except UnreadableFile as exc:
        raise PolicyProblem(f"cannot read policy file {name}: {exc}") from None
    try:
        return PolicyFile(name, path, data.decode("utf-8"))
    except UnicodeDecodeError:
        raise PolicyProblem(f"policy file {name} is not UTF-8") from None


# -- Cedar ----------------------------------------------------------------------------------------


def load_cedar(names: Sequence[str], schema: str | None, base_dir: Path) -> PolicySources:
    """Read and check a cedar guardrail's files: each must parse; all together must validate
    against the schema when one is given."""
    import cedarpy

    files = tuple(read_policy_file(n, base_dir) for n in names)
    labels: list[str] = []
    effects: list[str] = []
    for file in files:
        try:
            parsed = cedarpy.PolicySet.from_str(file.text)
        except ValueError as exc:
            line = _cedar_error_line(file.text)
            where = f"{file.name} line {line}" if line else file.name
            raise PolicyProblem(f"{where}: not valid Cedar: {exc}") from None
        policies = parsed.to_pst().static_policies
        ids = _cedar_ids(file.text)
        labels += [ids.get(i) or f"{file.name}#{i}" for i in range(len(policies))]
        effects += [policies[f"policy{i}"].effect for i in range(len(policies))]
    if not labels:
        raise PolicyProblem("the policy files hold no Cedar policy")
    if any(cedarpy.PolicySet.from_str(f.text).to_pst().templates for f in files):
        raise PolicyProblem("Cedar templates are not supported: write static policies")
    sources = PolicySources("cedar", files, None, tuple(labels), tuple(effects))
    if schema is None:
        return sources
    schema_file = read_policy_file(schema, base_dir)
    try:
        parsed_schema = _cedar_schema(schema_file)
    except ValueError as exc:
        raise PolicyProblem(f"{schema_file.name}: not a valid Cedar schema: {exc}") from None
    result = cedarpy.validate_policies(sources.text, parsed_schema)
    if not result.validation_passed:
        errors = "; ".join(_cedar_error(e, labels) for e in result.errors[:5])
        raise PolicyProblem(f"the policies do not validate against {schema_file.name}: {errors}")
    return PolicySources("cedar", files, schema_file, tuple(labels), tuple(effects))


def _cedar_error_line(text: str) -> int | None:
    """The line where the first policy that does not parse starts (cedarpy's parse errors
    carry no position): the policies are parsed one by one, each ending at a ``;``."""
    import cedarpy

    start = 0
    attempts = 0
    for end in (m.end() for m in re.finditer(";", text)):
        attempts += 1
        if attempts > 200:  # a ``;`` in strings, or a broken policy: stop looking ahead
            break
        try:
            cedarpy.PolicySet.from_str(text[start:end])
        except ValueError:
            continue
        start, attempts = end, 0
    rest = re.sub(r"//[^\n]*", lambda m: " " * len(m.group()), text[start:])
    offset = len(rest) - len(rest.lstrip())
    return text[: start + offset].count("\n") + 1 if start + offset < len(text) else None


def _cedar_schema(file: PolicyFile) -> Any:
    import cedarpy

    if file.name.endswith(".json"):
        return cedarpy.Schema.from_json_str(file.text)
    return cedarpy.Schema.from_str(file.text)


def _cedar_ids(text: str) -> dict[int, str]:
    """``@id("…")`` annotations by the index of the policy they name in one file."""
    import cedarpy

    found = {}
    policies = cedarpy.PolicySet.from_str(text).to_pst().static_policies
    for policy_id, policy in policies.items():
        value = (policy.annotations or {}).get("id")
        index = re.fullmatch(r"policy(\d+)", policy_id)
        if isinstance(value, str) and value and index:
            found[int(index.group(1))] = value
    return found


def _cedar_error(error: Any, labels: Sequence[str]) -> str:
    match = re.fullmatch(r"policy(\d+)", str(error.policy_id))
    index = int(match.group(1)) if match else -1
    label = labels[index] if 0 <= index < len(labels) else str(error.policy_id)
    message = re.sub(r"^\[policy\d+\] ", "", str(error.error))
    return f"{label}: {message.replace(f'`{error.policy_id}`', f'`{label}`')}"


# -- Rego -----------------------------------------------------------------------------------------


def load_rego(names: Sequence[str], query: str, base_dir: Path) -> PolicySources:
    """Read a rego guardrail's modules and compile them with ``query``."""
    files = tuple(read_policy_file(n, base_dir) for n in names)
    sources = PolicySources("rego", files)
    compile_rego(sources, query)
    packages = {p for f in files for p in re.findall(r"(?m)^\s*package\s+([\w.]+)", f.text)}
    if not any(query.startswith(f"data.{p}.") for p in packages):
        raise PolicyProblem(f"query {query}: no module of package {query.rsplit('.', 1)[0][5:]}"
                            f" (packages: {', '.join(sorted(packages)) or 'none'})")  # fmt: skip
    return sources


_REGO_LOCK = threading.Lock()


def compile_rego(sources: PolicySources, query: str) -> tuple[Any, Any]:
    """A regopy ``Interpreter`` holding the modules and the ``Bundle`` of ``query``, or
    ``PolicyProblem`` with the file, line and message of the first error."""
    import regopy

    interpreter = regopy.Interpreter()
    try:
        with _quiet_stdout():
            for file in sources.files:
                interpreter.add_module(file.name, file.text)
            bundle = interpreter.build(query)
    except regopy.RegoError as exc:
        raise PolicyProblem(_rego_error(str(exc), sources.files)) from None
    return interpreter, bundle


_ERROR = re.compile(r"\(error (\d+):")
_MESSAGE = re.compile(r"\(errormsg (\d+):")


def _rego_error(dump: str, files: Sequence[PolicyFile]) -> str:
    """The first error of rego-cpp's error tree as ``file line N: message``."""
    error = _ERROR.search(dump)
    message = _MESSAGE.search(dump)
    if message is None:
        return "not valid Rego"
    length = int(message.group(1))
    text = dump[message.end() : message.end() + length]
    if error is None:
        return f"not valid Rego: {text}"
    name_length = int(error.group(1))
    name = dump[error.end() : error.end() + name_length]
    offset = re.match(r"\|(\d+)\|", dump[error.end() + name_length :])
    file = next((f for f in files if f.name == name), None)
    if file is None or offset is None:
        return f"{name}: not valid Rego: {text}"
    line = file.text.encode()[: int(offset.group(1))].count(b"\n") + 1
    return f"{name} line {line}: not valid Rego: {text}"


@contextmanager
def _quiet_stdout() -> Iterator[None]:
    """rego-cpp prints compile errors on the process's standard output; the error is reported
    as a config problem instead, so that output is sent to /dev/null while compiling."""
    with _REGO_LOCK:
        try:
            sys.stdout.flush()
            saved = os.dup(1)
        except (OSError, ValueError):  # no standard output to protect
            yield
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 1)
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            os.close(devnull)
