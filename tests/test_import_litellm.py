"""``custos import litellm`` on LiteLLM configs of the shapes its own examples use (fixtures
written for these tests): the output passes ``custos config check`` in a process of its own,
the report lists what did not map by its LiteLLM path, secrets written into the LiteLLM file
never reach the output, and a converted config serves a call through the gateway."""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
from pathlib import Path

import openai
import pytest
import yaml

from tests.audit_helpers import one_call
from tests.conftest import CUSTOS, GatewayProcess, MockProvider

FIXTURES = Path(__file__).parent / "fixtures" / "litellm"
LITERAL_SECRETS = ("sk-literal-master-1234", "not-a-real-secret-but-literal")

#: Per fixture: lines the report must hold, by section.
EXPECTED = {
    "proxy_mixed.yaml": {
        "Mapped": ["model_list[0] (chat-eu): azure/chat-eu-deploy → azure-openai-northwind-eu/",
                   "model_group_alias gpt-4 → virtual model gpt-4",
                   "default_team_settings[0]: team research", "num_retries: 3"],
        "Approximated": ["model_list[4].api_key: a key written into the LiteLLM file is not "
                         "copied", "usage-based-routing-v2 → weighted",
                         "model_list[5]: no api_key; LiteLLM reads OPENAI_API_KEY",
                         "chat-large: stream_timeout 60.0s → timeouts.first_token_s"],
        "No equivalent": ["model_list[7] (sagemaker-model): provider 'sagemaker'",
                          "model_list[6] (broken-azure): no model name after azure/",
                          "model_list[9] (*): wildcard routing", "context_window_fallbacks",
                          "general_settings.master_key", "general_settings.pass_through_endpoints",
                          "router_settings.redis_host", "files_settings (top-level section)",
                          "litellm_settings.drop_params"],
    },
    "load_balanced.yaml": {
        "Mapped": ["openrouter/openai/gpt-4o-mini → openrouter/openai--gpt-4o-mini",
                   "groq/llama-3.1-8b-instant → groq/"],
        "No equivalent": ["model_list[3] (mistral-small): provider 'mistralai'",
                          "environment_variables (top-level section)"],
    },
    "reliability.yaml": {
        "Mapped": ["fallbacks: claude → claude-bedrock", "litellm_settings.max_budget",
                   "allowed_fails/cooldown_time", "routing_strategy: latency"],
        "Approximated": ["model_list[3]: no aws_region_name", "max_end_user_budget"],
        "No equivalent": ["model_list[4] (zephyr): provider 'huggingface'",
                          "fallbacks: 'zephyr' is not a model_name here",
                          "model_group_alias 'missing-alias'", "general_settings.alerting"],
    },
    "guardrails_and_credentials.yaml": {
        "Approximated": ["credential 'shared-azure' inlined",
                         "guardrails[0] (mask-pii): presidio → Custos's own pii detection",
                         "guardrails[1]: LiteLLM runs it when a request asks"],
        "No equivalent": ["model_list[3]: vertex_ai without vertex_credentials",
                          "guardrails[2] (prohibited-practices): guardrail "
                          "'litellm_content_filter'",
                          "model_list[2].litellm_params: max_tokens, temperature"],
    },
}  # fmt: skip


def _sections(report: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = ""
    for line in report.splitlines():
        if line.startswith("  - "):
            sections[current].append(line[4:])
        elif re.match(r"^[A-Z].*: \d+$", line):
            current = line.split(" (")[0].split(":")[0]
            sections[current] = []
    return sections


def _import(fixture: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CUSTOS, "import", "litellm", str(fixture), "-o", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_converted_config_passes_check_and_report_lists_what_did_not_map(
    name: str, tmp_path: Path
) -> None:
    out = tmp_path / "custos.yaml"
    done = _import(FIXTURES / name, out)
    assert done.returncode == 0, done.stderr
    assert "passes custos config check" in done.stderr
    sections = _sections(done.stdout)
    for section, wanted in EXPECTED[name].items():
        lines = sections[section]
        for fragment in wanted:
            assert any(fragment in line for line in lines), f"{section}: {fragment!r} in {lines}"
    # The config check, run as an operator would, with the variables the report names.
    env = {**os.environ, **{v: "set-by-test" for v in sections["Environment variables the "
                                                                 "config reads"]}}  # fmt: skip
    check = subprocess.run([*CUSTOS, "config", "check", str(out)], capture_output=True,
                           text=True, env=env, timeout=60)  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert "OK" in check.stdout
    text = out.read_text()
    for secret in LITERAL_SECRETS:
        assert secret not in text and secret not in done.stdout + done.stderr
    assert "&id" not in text  # plain YAML, no anchors


def test_what_each_shape_becomes(tmp_path: Path) -> None:
    def converted(name: str) -> dict:
        out = tmp_path / f"{name}.custos.yaml"
        assert _import(FIXTURES / name, out).returncode == 0
        return yaml.safe_load(out.read_text())

    mixed = converted("proxy_mixed.yaml")
    chat_eu = mixed["virtual_models"]["chat-eu"]
    assert chat_eu["strategy"] == "weighted"
    assert [t["model"] for t in chat_eu["targets"]] == [
        "azure-openai-northwind-eu/chat-eu-deploy", "openai/gpt-4o-mini"]  # fmt: skip
    assert mixed["virtual_models"]["gpt-4"] == mixed["virtual_models"]["chat-large"]
    assert chat_eu["retry"] == {"attempts": 4}
    # The deployment without a key reads OPENAI_API_KEY, as LiteLLM would, from the account
    # chat-eu's OpenAI deployment uses; chat-large's own timeout makes an account of its own.
    assert mixed["virtual_models"]["images"]["targets"] == [{"model": "openai/dall-e-3"}]
    assert mixed["providers"]["openai"]["api_key"] == "${env:OPENAI_API_KEY}"
    assert mixed["providers"]["openai-2"]["timeout_s"] == 300.0
    assert mixed["providers"]["openai"]["timeout_s"] == 600.0
    assert mixed["virtual_models"]["chat-large"]["timeouts"] == {"first_token_s": 60.0}
    assert set(mixed["teams"]) == {"research", "support"}
    assert mixed["providers"]["openai-vllm"]["models"]["meta-llama--Llama-3.1-8B-Instruct"] == {
        "upstream_model": "meta-llama/Llama-3.1-8B-Instruct", "unpriced": "allow"}  # fmt: skip
    assert mixed["providers"]["openai-vllm"]["api_key"] == "${env:OPENAI_VLLM_API_KEY}"
    assert {r["id"]: r["limit_to"] for r in mixed["rate_limits"]} == {
        "chat-large-requests": 480, "local-llama-requests": 1000}  # fmt: skip

    balanced = converted("load_balanced.yaml")
    weights = [t["weight"] for t in balanced["virtual_models"]["gpt-4o-mini"]["targets"]]
    assert weights == [1000, 333, 33]  # rpm 30, 10 and none (1), relative to the largest
    assert balanced["providers"]["openrouter"]["base_url"] == "https://openrouter.ai/api/v1"

    reliable = converted("reliability.yaml")
    claude = reliable["virtual_models"]["claude"]
    assert "strategy" not in claude  # its own deployment first, then the fallbacks in order
    assert [t["model"].split("/")[0] for t in claude["targets"]] == [
        "anthropic", "bedrock-eu-central-1", "bedrock-us-west-2"]  # fmt: skip
    assert claude["cooldown"] == {"failures": 3, "window_s": 60.0, "cooldown_s": 30.0}
    assert reliable["virtual_models"]["claude-bedrock"]["strategy"] == "latency"
    price = reliable["providers"]["anthropic"]["models"]["claude-sonnet-4-5"]
    assert (price["input_per_mtok"], price["output_per_mtok"]) == ("3", "15")
    assert reliable["budgets"][0] == {"id": "proxy-budget", "limit_usd": "250.5",
                                      "period": "month"}  # fmt: skip
    assert reliable["providers"]["anthropic"]["timeout_s"] == 30.0

    guarded = converted("guardrails_and_credentials.yaml")
    assert [(g["id"], g["hook"], g["type"]) for g in guarded["guardrails"]] == [
        ("mask-pii", "llm_input", "pii"), ("injection", "llm_input", "prompt_injection"),
        ("no-secrets-out", "llm_output", "secrets")]  # fmt: skip
    azure = guarded["providers"]["azure-openai-contoso-us"]
    assert azure["api_key"] == "${env:AZURE_US_KEY}" and azure["api_version"] == "2024-10-21"
    assert not any(p["type"] == "vertex" for p in guarded["providers"].values())


def test_bad_input_is_refused(tmp_path: Path) -> None:
    not_litellm = tmp_path / "other.yaml"
    not_litellm.write_text("version: 1\nproviders: {}\n")
    done = _import(not_litellm, tmp_path / "out.yaml")
    assert done.returncode == 1 and "no model_list" in done.stderr
    assert not (tmp_path / "out.yaml").exists()
    broken = tmp_path / "broken.yaml"
    broken.write_text("model_list: [\n")
    assert _import(broken, tmp_path / "out.yaml").returncode == 1
    nothing = tmp_path / "nothing.yaml"
    nothing.write_text(
        "model_list:\n  - model_name: x\n    litellm_params: {model: 'sagemaker/x'}\n"
    )
    done = _import(nothing, tmp_path / "out.yaml")
    assert done.returncode == 1 and "no deployment" in done.stderr
    existing = tmp_path / "exists.yaml"
    existing.write_text("keep me")
    done = _import(FIXTURES / "load_balanced.yaml", existing)
    assert done.returncode == 1 and existing.read_text() == "keep me"
    assert _import(FIXTURES / "load_balanced.yaml", existing, "--force").returncode == 0


def test_a_converted_config_serves_calls(mock_provider: MockProvider, tmp_path: Path) -> None:
    litellm = tmp_path / "litellm.yaml"
    litellm.write_text(textwrap.dedent(f"""\
        model_list:
          - model_name: team-chat
            litellm_params:
              model: openai/gpt-5.5+status=503
              api_base: {mock_provider.url}/v1
              api_key: os.environ/CUSTOS_TEST_MOCK_KEY
          - model_name: backup-chat
            litellm_params:
              model: openai/gpt-5.5
              api_base: {mock_provider.url}/v1
              api_key: os.environ/CUSTOS_TEST_MOCK_KEY
              input_cost_per_token: 0.00000125
              output_cost_per_token: 0.00001
        litellm_settings:
          fallbacks: [{{"team-chat": ["backup-chat"]}}]
        """))  # fmt: skip
    out = tmp_path / "converted.yaml"
    done = _import(litellm, out)
    assert done.returncode == 0, done.stderr
    # What the operator adds for a test gateway: its store and token hash key.
    config = out.read_text() + textwrap.dedent("""\
        state: {store: "sqlite:///./custos.db"}
        identity: {token_hash_key: "${env:CUSTOS_TEST_TOKEN_KEY}"}
        """)
    gateway = GatewayProcess(config, tmp_path)
    try:
        client = openai.OpenAI(base_url=gateway.base_url, api_key=gateway.token, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="team-chat", messages=[{"role": "user", "content": "hello"}]
        )
        assert raw.parse().choices[0].message.content
        # The first deployment answers 503: the fallback from the LiteLLM file served it.
        record = one_call(f"sqlite:///{tmp_path / 'custos.db'}", raw.headers["x-custos-request-id"])
        assert [(a["target"], a["status"]) for a in record["attempts"]] == [
            ("openai-local/gpt-5.5-status-503", 503), ("openai-local/gpt-5.5", 200)]  # fmt: skip
        assert record["outcome"] == "served" and record["cost_micros"] > 0
    finally:
        gateway.stop()
