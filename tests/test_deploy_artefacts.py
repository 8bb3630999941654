"""The deployment artefacts, checked without Docker or Helm (neither can run on the test machine).

- Dockerfile: multi-stage, a non-root numeric user, a HEALTHCHECK on /healthz, only what
  .dockerignore lets into the context is copied, and its command is one ``custos`` accepts.
- Helm chart (deploy/helm/custos): Chart.yaml and values.yaml well-formed, values valid against
  the chart's values.schema.json (which Helm itself enforces), every ``.Values`` path a template
  reads exists, every ``include`` is defined, template actions balanced, the probes, security
  context, config mount and container arguments as docs/deployment.md says, and the default
  config in values.yaml is one ``custos`` loads. What is not checked here: rendering the
  templates and validating the rendered objects against the Kubernetes API (``helm template``,
  ``kubeconform``), which need tools the machine does not have.
- Compose (deploy/compose): the file's structure (every secret, config and volume declared,
  three replicas with their own ports and spools, hardened as in Kubernetes), the collector's
  pipelines, the replicas' config loads, and make-secrets.sh makes keys custos accepts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from custos.audit.log.checkpoint import load_signer
from custos.cli import build_parser
from custos.config.loader import load_config
from tests.conftest import ROOT

CHART = ROOT / "deploy" / "helm" / "custos"
COMPOSE = ROOT / "deploy" / "compose"


# -- Dockerfile ---------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) per instruction, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [
        (parts[0].upper(), parts[1] if len(parts) > 1 else "")
        for parts in (line.strip().split(None, 1) for line in joined.splitlines())
        if parts
    ]


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile()
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]


def test_the_image_is_built_in_stages_and_runs_as_a_non_root_user() -> None:
    stages = [args for op, args in _dockerfile() if op == "FROM"]
    assert len(stages) >= 2 and stages[0].endswith(" AS build")
    final = _final_stage()
    [user] = [args for op, args in final if op == "USER"]
    uid, gid = user.split(":")
    assert int(uid) >= 1000 and int(gid) >= 1000
    copied = [args for op, args in final if op == "COPY"]
    assert copied and all(args.startswith("--from=build ") for args in copied)


def test_the_healthcheck_asks_healthz_and_the_command_is_custos_serve() -> None:
    final = dict(_final_stage())
    assert "CUSTOS_HEALTHCHECK_URL=http://127.0.0.1:8787/healthz" in final["ENV"]
    assert "CUSTOS_HEALTHCHECK_URL" in final["HEALTHCHECK"]
    assert json.loads(final["ENTRYPOINT"]) == ["custos"]
    command = json.loads(final["CMD"])
    args = build_parser().parse_args(command)
    assert (args.config, args.host, args.port) == ("/etc/custos/custos.yaml", "0.0.0.0", 8787)
    assert "8787" in final["EXPOSE"] and "/var/lib/custos" in final["VOLUME"]


def test_only_the_package_enters_the_build_context() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"  # everything out, then what the build needs back in
    back_in = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert back_in == {"pyproject.toml", "README.md", "custos"}
    for op, args in _dockerfile():
        if op == "COPY" and not args.startswith("--from="):
            *sources, _target = args.split()
            for source in sources:
                assert source.rstrip("/") in back_in, source
                assert (ROOT / source).exists(), source


# -- Helm chart ---------------------------------------------------------------------------------


def _values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def _templates() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((CHART / "templates").iterdir())}


def test_chart_and_values_are_well_formed_and_valid_against_the_chart_schema() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "custos"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    assert chart["appVersion"] == _project_version()
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(_values(), schema)
    broken = {**_values(), "securityContext": {"readOnlyRootFilesystem": False}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def _project_version() -> str:
    match = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert match
    return match.group(1)


def _has_path(values: dict[str, Any], dotted: str) -> bool:
    node: Any = values
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def test_every_value_a_template_reads_exists_and_every_include_is_defined() -> None:
    values, templates = _values(), _templates()
    text = "\n".join(templates.values())
    read = set(re.findall(r"\.Values\.([A-Za-z0-9_.]+[A-Za-z0-9_])", text))
    assert read, "no template reads a value"
    assert sorted(p for p in read if not _has_path(values, p)) == []
    defined = set(re.findall(r'define "([^"]+)"', text))
    included = set(re.findall(r'include "([^"]+)"', text))
    assert included <= defined


@pytest.mark.parametrize("name", sorted(p.name for p in (CHART / "templates").iterdir()))
def test_template_actions_are_balanced(name: str) -> None:
    text = (CHART / "templates" / name).read_text()
    assert text.count("{{") == text.count("}}")
    actions = re.findall(r"\{\{-?\s*(\w+)", text)
    opened = sum(a in ("if", "with", "range", "define") for a in actions)
    assert opened == actions.count("end")


def test_the_deployment_probes_secures_and_mounts_as_documented() -> None:
    values, deployment = _values(), _templates()["deployment.yaml"]
    assert values["readinessProbe"]["path"] == "/readyz"
    assert values["livenessProbe"]["path"] == "/healthz"
    assert "path: {{ .Values.readinessProbe.path }}" in deployment
    assert "path: {{ .Values.livenessProbe.path }}" in deployment
    assert values["securityContext"]["readOnlyRootFilesystem"] is True
    assert values["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert values["podSecurityContext"]["runAsNonRoot"] is True
    # The config is mounted as a directory: a subPath mount never sees a ConfigMap update.
    assert "subPath" not in deployment and "checksum/config" not in deployment
    assert values["terminationGracePeriodSeconds"] > 30  # the gateway's graceful shutdown
    kinds = {re.search(r"^kind: (\w+)", t, re.M).group(1)  # type: ignore[union-attr]
             for n, t in _templates().items() if n.endswith(".yaml")}  # fmt: skip
    assert kinds == {"ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Job",
                     "PodDisruptionBudget", "Service", "ServiceAccount"}  # fmt: skip


def test_the_migration_job_runs_before_the_release_and_is_never_taken_for_a_replica() -> None:
    job = _templates()["migration-job.yaml"]
    assert "helm.sh/hook: pre-install,pre-upgrade" in job
    assert "custos.selectorLabels" not in job  # the Service and the PDB select on those
    assert "serviceAccountName" not in job  # the chart's account does not exist before install
    script = job.split("- |\n", 1)[1]
    assert "custos db migrate --config /tmp/migrate.yaml" in script
    assert "CUSTOS_MIGRATION_STORE_URL" in script and "--store" not in script  # not in argv


def test_the_migration_jobs_script_migrates_a_store(tmp_path: Path) -> None:
    """The container's command, run by sh as the Job runs it (its /tmp made the test's)."""
    job = _templates()["migration-job.yaml"]
    block = "args:" + re.split(r"\n\s+env:\n", job.split("args:", 1)[1], maxsplit=1)[0]
    [script] = yaml.safe_load(block)["args"]
    assert script.startswith("cat > /tmp/migrate.yaml <<'YAML'\n")
    store = tmp_path / "migrated.db"
    env = {**os.environ, "CUSTOS_MIGRATION_STORE_URL": f"sqlite:///{store}",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # fmt: skip
    done = subprocess.run(["sh", "-c", script.replace("/tmp/", f"{tmp_path}/")], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "applied migration(s) 0001" in done.stdout and store.is_file()


def test_the_container_arguments_are_ones_custos_serve_accepts() -> None:
    values, deployment = _values(), _templates()["deployment.yaml"]
    block = deployment.split("args:\n", 1)[1].split("env:", 1)[0]
    items = re.findall(r"^\s+- (.+)$", block, re.M)

    def value_of(item: str) -> str:
        found = re.fullmatch(r"\{\{ \.Values\.(\w+) \| quote \}\}", item)
        return str(values[found.group(1)]) if found else item

    args = build_parser().parse_args([value_of(i) for i in items])
    assert args.config == "/etc/custos/config/custos.yaml"
    assert (args.host, args.port, args.workers) == ("0.0.0.0", values["port"], values["workers"])


def _redirect(text: str, prefixes: dict[str, Path]) -> str:
    for prefix, target in prefixes.items():
        text = text.replace(prefix, f"{target}/")
    return text


def _pem(path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))  # fmt: skip


def test_the_charts_default_config_is_one_custos_loads(tmp_path: Path) -> None:
    secrets, signing = tmp_path / "secrets", tmp_path / "signing"
    secrets.mkdir()
    signing.mkdir()
    for name in ("postgres-password", "openai-api-key"):
        (secrets / name).write_text("not-a-real-secret")
    (secrets / "token-hash-key").write_text("k" * 48)
    _pem(signing / _values()["signingKey"]["key"])
    text = yaml.safe_dump(_values()["config"])
    path = tmp_path / "custos.yaml"
    path.write_text(_redirect(text, {"/etc/custos/secrets/": secrets,
                                     "/etc/custos/signing/": signing}))  # fmt: skip
    loaded = load_config(path).config
    assert loaded.state.store.startswith("postgresql://") and loaded.state.counters != "memory"
    assert loaded.audit.spool.path.startswith(_values()["spool"]["mountPath"])
    assert loaded.audit.signing_key == f"{signing}/{_values()['signingKey']['key']}"


# -- Compose ------------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE / "compose.yaml").read_text())


def _replicas(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if s.get("command", [""])[0] == "serve"}


def test_compose_runs_three_hardened_replicas_on_postgres_redis_and_a_collector() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"postgres", "redis", "otel-collector", "setup"} <= services.keys()
    replicas = _replicas(compose)
    assert len(replicas) == 3
    ports = [s["ports"][0].split(":")[0] for s in replicas.values()]
    spools = [v.split(":")[0] for s in replicas.values() for v in s["volumes"]
              if v.endswith(":/var/lib/custos")]  # fmt: skip
    assert len(set(ports)) == 3 and len(set(spools)) == 3
    for service in replicas.values():
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
        assert int(service["user"].split(":")[0]) >= 1000
        assert service["depends_on"]["setup"] == {"condition": "service_completed_successfully"}
        assert service["depends_on"]["redis"] == {"condition": "service_healthy"}
        args = build_parser().parse_args(service["command"])
        assert args.config == "/etc/custos/config/custos.yaml"
        # The config's directory is mounted (a file mount never shows an edit that replaces it).
        assert "./config:/etc/custos/config:ro" in service["volumes"]
    assert services["setup"]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    for name in ("setup", "mock-provider"):
        build_parser().parse_args(services[name]["command"])


def test_compose_declares_what_it_uses_and_the_files_exist() -> None:
    compose = _compose()
    for name, service in compose["services"].items():
        for secret in service.get("secrets", []):
            assert secret in compose["secrets"], (name, secret)
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE / source).exists(), source
            else:
                assert source in compose["volumes"], (name, source)
    assert (COMPOSE / "config" / "custos.yaml").is_file()
    assert (COMPOSE / _compose()["x-custos"]["build"]["context"]).resolve() == ROOT.resolve()


def test_the_collector_receives_what_the_replicas_export() -> None:
    collector = yaml.safe_load((COMPOSE / "otel-collector.yaml").read_text())
    pipelines = collector["service"]["pipelines"]
    assert {"traces", "logs"} <= pipelines.keys()
    for pipeline in pipelines.values():
        assert set(pipeline["receivers"]) <= collector["receivers"].keys()
        assert set(pipeline["exporters"]) <= collector["exporters"].keys()
        assert set(pipeline.get("processors", [])) <= collector["processors"].keys()
    endpoint = collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    config = yaml.safe_load((COMPOSE / "config" / "custos.yaml").read_text())
    [export] = config["audit"]["export"]
    assert export["otlp"]["endpoint"].endswith(":" + endpoint.rsplit(":", 1)[1])
    assert export["otlp"]["endpoint"].startswith("http://otel-collector:")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_make_secrets_then_the_replicas_config_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(COMPOSE / "make-secrets.sh", tmp_path)
    done = subprocess.run(["sh", str(tmp_path / "make-secrets.sh")], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    secrets = tmp_path / "secrets"
    assert len((secrets / "token-hash-key").read_bytes()) >= 32
    signer = load_signer("custos/audit/compose", str(secrets / "audit-signing-key.pem"))
    assert signer.verifier.vkey
    # Compose mounts each secret as /run/secrets/<name>: the signing key under its secret name.
    mounted = tmp_path / "run-secrets"
    mounted.mkdir()
    for name, secret in _compose()["secrets"].items():
        shutil.copy(tmp_path / secret["file"], mounted / name)
    text = _redirect((COMPOSE / "config" / "custos.yaml").read_text(), {"/run/secrets/": mounted})
    (tmp_path / "custos.yaml").write_text(text)
    monkeypatch.setenv("CUSTOS_MOCK_KEY", "mock-key-for-compose")
    loaded = load_config(tmp_path / "custos.yaml").config
    assert loaded.state.counters == "redis://redis:6379/0"
    again = subprocess.run(["sh", str(tmp_path / "make-secrets.sh")], capture_output=True,
                           text=True, timeout=60)  # fmt: skip
    assert again.returncode == 0
    kept = load_signer("custos/audit/compose", str(secrets / "audit-signing-key.pem"))
    assert kept.verifier.vkey == signer.verifier.vkey  # a second run replaces nothing
