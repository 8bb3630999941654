"""``gemini`` and ``vertex`` accounts in the config file and ``custos config check``: defaults,
what each type needs, and a service-account key that never reaches the output."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from custos.config import load_config
from tests.google_helpers import service_account
from tests.test_config import check

API_KEY = "AIza-live-0123456789abcdef"


def write_key(path: Path, **changes: object) -> str:
    """A key file at ``path``; returns its private key (which must never be printed)."""
    key = service_account(**changes)
    path.write_text(key.json)
    return key.pem


def config(vertex_extra: str = "") -> str:
    return textwrap.dedent(
        """\
        version: 1
        providers:
          gemini-main:
            type: gemini
            api_key: ${env:CUSTOS_T_GEMINI_KEY}
            models:
              gemini-2.5-flash: {input_per_mtok: 0.3, output_per_mtok: 2.5}
          vertex-eu:
            type: vertex
            credentials: ${file:sa.json}
            region: europe-west4
        %s
            models:
              gemini-2.5-pro: {input_per_mtok: 1.25, output_per_mtok: 10}
        """
    ) % (vertex_extra,)


def test_gemini_and_vertex_accounts_check_ok_with_their_public_endpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pem = write_key(tmp_path / "sa.json")
    path = tmp_path / "custos.yaml"
    path.write_text(config())
    result = check(path, CUSTOS_T_GEMINI_KEY=API_KEY)
    assert result.returncode == 0, result.stderr
    assert "2 provider account(s), 2 model(s)" in result.stdout
    assert API_KEY not in result.stdout + result.stderr
    assert pem.splitlines()[1] not in result.stdout + result.stderr
    monkeypatch.setenv("CUSTOS_T_GEMINI_KEY", API_KEY)
    providers = load_config(path).config.providers
    assert providers["gemini-main"].base_url == "https://generativelanguage.googleapis.com"
    assert providers["vertex-eu"].base_url == "https://europe-west4-aiplatform.googleapis.com"
    assert providers["vertex-eu"].region == "europe-west4"


def test_a_bad_service_account_key_is_a_problem_that_does_not_print_the_key(
    tmp_path: Path,
) -> None:
    pem = write_key(tmp_path / "sa.json", token_uri=None)
    path = tmp_path / "custos.yaml"
    path.write_text(config())
    result = check(path, CUSTOS_T_GEMINI_KEY=API_KEY)
    assert result.returncode == 1
    assert "providers.vertex-eu" in result.stderr
    assert "the service-account key file has no token_uri" in result.stderr
    assert pem.splitlines()[1] not in result.stdout + result.stderr
    assert "PRIVATE KEY" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_vertex_without_a_project_anywhere_is_a_problem(tmp_path: Path) -> None:
    write_key(tmp_path / "sa.json", project_id=None)
    path = tmp_path / "custos.yaml"
    path.write_text(config())
    result = check(path, CUSTOS_T_GEMINI_KEY=API_KEY)
    assert result.returncode == 1
    assert "vertex needs project" in result.stderr
    path.write_text(config("    project: acme-other"))
    assert check(path, CUSTOS_T_GEMINI_KEY=API_KEY).returncode == 0
