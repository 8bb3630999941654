"""``custos import litellm``: a LiteLLM proxy config turned into a Custos config and a report.

What is converted (docs/import-litellm.md has the full table):

- ``model_list``: each deployment's ``litellm_params.model`` (``provider/name``) picks the
  account type (``azure/`` → azure_openai, ``anthropic/`` → anthropic, ``bedrock/`` → bedrock,
  ``vertex_ai/`` → vertex, ``gemini/`` → gemini, ``openai/`` or no prefix → openai, or
  openai_compatible with an ``api_base``; OpenAI-compatible services such as groq, mistral,
  openrouter, together_ai, deepseek, fireworks_ai, ollama, hosted_vllm → openai_compatible).
  Deployments sharing endpoint and key share one provider account. Each ``model_name`` becomes
  a virtual model over its deployments (weighted by ``rpm``/``tpm`` when LiteLLM would be).
- Keys: ``os.environ/NAME`` becomes ``${env:NAME}``; a key written literally is never copied
  (the file is kept in the audit history): it becomes ``${env:…}`` of a name the report gives.
- Prices: LiteLLM's per-token costs where the file has them, else ``unpriced: allow`` (LiteLLM
  prices from its own model map, which the file does not hold): the report says so.
- ``fallbacks``, ``num_retries``, ``allowed_fails``/``cooldown_time``, ``model_group_alias``,
  ``routing_strategy``, ``max_budget``/``budget_duration``, deployment ``rpm``/``tpm``,
  ``default_team_settings`` (teams), ``guardrails`` (presidio, secret detection, prompt
  injection), ``extra_headers``/``organization``.

Everything else is reported as approximated or as having no equivalent, by its path in the
LiteLLM file; settings kept in LiteLLM's database (virtual keys, their budgets) are not in the
file, and the report lists the admin commands that create their Custos counterparts.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENV = re.compile(r"^os\.environ/([A-Za-z_][A-Za-z0-9_]*)$")
_AWS_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")

#: OpenAI-compatible services LiteLLM knows by prefix, and their public endpoints.
COMPATIBLE = {
    "groq": "https://api.groq.com/openai/v1",
    "mistral": "https://api.mistral.ai/v1",
    "openrouter": "https://openrouter.ai/api/v1",
    "together_ai": "https://api.together.xyz/v1",
    "deepseek": "https://api.deepseek.com/v1",
    "fireworks_ai": "https://api.fireworks.ai/inference/v1",
    "perplexity": "https://api.perplexity.ai",
    "xai": "https://api.x.ai/v1",
    "ollama": "http://localhost:11434/v1",
    "ollama_chat": "http://localhost:11434/v1",
    "hosted_vllm": "",
    "vllm": "",
    "lm_studio": "",
    "xinference": "",
    "openai_like": "",
    "custom_openai": "",
}
#: The variable LiteLLM reads a provider's key from when the deployment names none.
DEFAULT_KEY_ENV = {
    "openai": "OPENAI_API_KEY",
    "azure": "AZURE_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY",
    "groq": "GROQ_API_KEY",
    "mistral": "MISTRAL_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
    "together_ai": "TOGETHERAI_API_KEY",
    "deepseek": "DEEPSEEK_API_KEY",
    "fireworks_ai": "FIREWORKS_AI_API_KEY",
    "perplexity": "PERPLEXITYAI_API_KEY",
    "xai": "XAI_API_KEY",
}
_NATIVE = {"azure": "azure_openai", "anthropic": "anthropic", "bedrock": "bedrock",
           "vertex_ai": "vertex", "gemini": "gemini", "openai": "openai"}  # fmt: skip
_PERIODS = {"1d": "day", "24h": "day", "7d": "week", "1w": "week", "30d": "month", "1mo": "month",
            "1m": "month", "90d": "quarter", "3mo": "quarter"}  # fmt: skip
_DEPLOYMENT_KEYS_MAPPED = {"model", "api_base", "api_key", "api_version", "rpm", "tpm",
                           "timeout", "aws_region_name", "aws_access_key_id",
                           "aws_secret_access_key", "aws_session_token", "vertex_project",
                           "vertex_location", "vertex_credentials", "input_cost_per_token",
                           "output_cost_per_token", "extra_headers", "organization",
                           "base_model", "stream_timeout"}  # fmt: skip


@dataclass
class Report:
    """What the conversion did, each line naming the LiteLLM path it is about."""

    mapped: list[str] = field(default_factory=list)
    approximated: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)

    def need_env(self, name: str) -> None:
        if name not in self.env:
            self.env.append(name)

    def text(self) -> str:
        parts = []
        for title, lines in (
            ("Mapped", self.mapped),
            ("Approximated (check these)", self.approximated),
            ("No equivalent (not converted)", self.unmapped),
            ("Environment variables the config reads", self.env),
            ("Admin commands to run (what lives in LiteLLM's database, not its file)",
             self.commands),
        ):  # fmt: skip
            parts.append(f"{title}: {len(lines)}")
            parts.extend(f"  - {line}" for line in lines)
        return "\n".join(parts) + "\n"


class NotLiteLLMConfig(ValueError):
    """The input is not a LiteLLM config this can read."""


@dataclass
class _Account:
    name: str
    settings: dict[str, Any]
    models: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class _Target:
    ref: str  # account/model
    rpm: int | None
    tpm: int | None
    stream_timeout: float | None = None


class _Converter:
    def __init__(self, source: dict[str, Any]) -> None:
        self.source = source
        self.report = Report()
        self.accounts: dict[tuple[Any, ...], _Account] = {}
        self.groups: dict[str, list[_Target]] = {}
        self.group_names: dict[str, str] = {}  # LiteLLM model_name -> virtual model name
        self.teams_seen: list[str] = []
        router, litellm = source.get("router_settings") or {}, source.get("litellm_settings") or {}
        #: LiteLLM's request timeout for every deployment that sets none.
        self.default_timeout = router.get("timeout", litellm.get("request_timeout"))
        if self.default_timeout is not None:
            self.report.mapped.append(
                f"request timeout {self.default_timeout}s → each provider account's timeout_s"
            )
        listed = [c for c in source.get("credential_list") or [] if isinstance(c, dict)]
        self.credentials = {
            c.get("credential_name"): c.get("credential_values") or {} for c in listed
        }

    # -- values --------------------------------------------------------------------------------

    def secret(self, value: Any, path: str, fallback_env: str) -> str:
        """A secret as a reference: ``os.environ/X`` → ``${env:X}``; a literal is never copied."""
        if isinstance(value, str) and (match := _ENV.match(value.strip())):
            self.report.need_env(match.group(1))
            return f"${{env:{match.group(1)}}}"
        self.report.approximated.append(
            f"{path}: a key written into the LiteLLM file is not copied; the Custos config reads "
            f"${{env:{fallback_env}}} instead: set it"
        )
        self.report.need_env(fallback_env)
        return f"${{env:{fallback_env}}}"

    def plain(self, value: Any, path: str) -> Any:
        """A non-secret value; ``os.environ/X`` cannot be a reference there."""
        if isinstance(value, str) and (match := _ENV.match(value.strip())):
            self.report.need_env(match.group(1))
            return f"${{env:{match.group(1)}}}"
        return value

    # -- model_list ----------------------------------------------------------------------------

    def deployments(self) -> None:
        entries = self.source.get("model_list") or []
        if not isinstance(entries, list):
            raise NotLiteLLMConfig("model_list must be a list")
        for index, entry in enumerate(entries):
            path = f"model_list[{index}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("litellm_params"), dict):
                self.report.unmapped.append(f"{path}: no litellm_params")
                continue
            self.deployment(entry, path)

    def deployment(self, entry: dict[str, Any], path: str) -> None:
        params = dict(entry["litellm_params"])
        credential = params.pop("litellm_credential_name", None)
        if credential is not None:
            params = {**self.credentials.get(credential, {}), **params}
            self.report.approximated.append(f"{path}: credential {credential!r} inlined")
        public = str(entry.get("model_name") or "")
        model = str(params.get("model") or "")
        if "*" in public or "*" in model:
            self.report.unmapped.append(
                f"{path} ({public or model}): wildcard routing; Custos lists each model with its "
                "price: add the models you use"
            )
            return
        prefix, _, name = model.partition("/") if "/" in model else ("", "", model)
        kind = _NATIVE.get(prefix) or ("openai_compatible" if prefix in COMPATIBLE else None)
        if prefix == "" and model:
            kind, name = "openai", model
        if kind is not None and not name:
            self.report.unmapped.append(f"{path} ({public}): no model name after {prefix}/")
            return
        if kind is None:
            self.report.unmapped.append(
                f"{path} ({public}): provider {prefix or model!r} has no Custos account type"
            )
            return
        if kind == "openai" and params.get("api_base"):
            kind = "openai_compatible"
        account = self.account(kind, prefix, params, path)
        if account is None:
            return
        key = self.model(account, kind, prefix, name, params, entry, path)
        rpm, tpm = (
            _int(params.get("rpm", entry.get("rpm"))),
            _int(params.get("tpm", entry.get("tpm"))),
        )
        stream = params.get("stream_timeout")
        stream_s = float(stream) if _number(stream) and float(stream) > 0 else None
        self.groups.setdefault(public or f"{account.name}-{key}", []).append(
            _Target(f"{account.name}/{key}", rpm, tpm, stream_s)
        )
        rest = sorted(set(params) - _DEPLOYMENT_KEYS_MAPPED)
        if rest:
            self.report.unmapped.append(
                f"{path}.litellm_params: {', '.join(rest)} (Custos does not set request "
                "parameters for the caller)"
            )
        self.report.mapped.append(f"{path} ({public}): {model} → {account.name}/{key}")

    def account(self, kind: str, prefix: str, params: dict[str, Any],
                path: str) -> _Account | None:  # fmt: skip
        settings: dict[str, Any] = {"type": kind}
        base = params.get("api_base")
        if base:
            settings["base_url"] = self.plain(base, f"{path}.api_base")
        elif kind == "openai":
            settings["base_url"] = "https://api.openai.com/v1"
        elif kind == "anthropic":
            settings["base_url"] = "https://api.anthropic.com"
        elif kind == "openai_compatible":
            default = COMPATIBLE.get(prefix, "")
            if not default:
                self.report.unmapped.append(f"{path}: {prefix}/ needs api_base")
                return None
            settings["base_url"] = default
            if prefix.startswith("ollama"):
                self.report.approximated.append(f"{path}: ollama's OpenAI-compatible /v1 API "
                                                "on localhost:11434 (set base_url)")  # fmt: skip
        elif kind == "azure_openai":
            self.report.unmapped.append(f"{path}: azure/ needs api_base")
            return None
        if kind == "azure_openai":
            settings["api_version"] = str(params.get("api_version") or "2024-10-21")
            if not params.get("api_version"):
                self.report.approximated.append(f"{path}: no api_version; 2024-10-21 assumed")
        if kind == "bedrock" and not self.bedrock(settings, params, path):
            return None
        if kind == "vertex" and not self.vertex(settings, params, path):
            return None
        timeout = params.get("timeout", self.default_timeout)
        if _number(timeout) and float(timeout) > 0:
            settings["timeout_s"] = min(float(timeout), 3600.0)
        headers = dict(params.get("extra_headers") or {})
        if params.get("organization") and isinstance(params["organization"], str):
            headers["OpenAI-Organization"] = params["organization"]
        if headers:
            settings["headers"] = {str(k): str(v) for k, v in headers.items()}
        key = params.get("api_key")
        default_env = DEFAULT_KEY_ENV.get(prefix or "openai")
        if key is None and default_env is not None and kind not in ("bedrock", "vertex"):
            key = f"os.environ/{default_env}"  # where LiteLLM itself looks
        # Deployments share an account when everything the account says is the same.
        identity = (str(key), str(sorted((k, str(v)) for k, v in settings.items())))
        if params.get("api_key") is None and key is not None and kind not in ("bedrock", "vertex"):
            self.report.approximated.append(
                f"{path}: no api_key; LiteLLM reads {default_env} from the environment, and so "
                "does the account"
            )
        if identity not in self.accounts:
            name = self.account_name(kind, prefix, settings)
            if key is not None and kind not in ("bedrock", "vertex"):
                env = f"{name.upper().replace('-', '_').replace('.', '_')}_API_KEY"
                settings["api_key"] = self.secret(key, f"{path}.api_key", env)
            self.accounts[identity] = _Account(name, settings)
        return self.accounts[identity]

    def bedrock(self, settings: dict[str, Any], params: dict[str, Any], path: str) -> bool:
        region = params.get("aws_region_name")
        if not isinstance(region, str) or not _AWS_REGION.match(region):
            region = "us-east-1"
            self.report.approximated.append(
                f"{path}: no aws_region_name; us-east-1 assumed (one region per account)"
            )
        settings["region"] = region
        for ours, theirs, env in (("access_key_id", "aws_access_key_id", "AWS_ACCESS_KEY_ID"),
                                  ("secret_access_key", "aws_secret_access_key",
                                   "AWS_SECRET_ACCESS_KEY")):  # fmt: skip
            value = params.get(theirs)
            if value is None:
                self.report.need_env(env)
                settings[ours] = f"${{env:{env}}}"
            else:
                settings[ours] = self.secret(value, f"{path}.{theirs}", env)
        if params.get("aws_session_token"):
            settings["session_token"] = self.secret(
                params["aws_session_token"], f"{path}.aws_session_token", "AWS_SESSION_TOKEN"
            )
        return True

    def vertex(self, settings: dict[str, Any], params: dict[str, Any], path: str) -> bool:
        credentials, location = params.get("vertex_credentials"), params.get("vertex_location")
        if not isinstance(credentials, str) or not credentials or _ENV.match(credentials):
            self.report.unmapped.append(
                f"{path}: vertex_ai without vertex_credentials as a key file: add a vertex "
                "account with credentials: ${file:key.json}"
            )
            return False
        settings["credentials"] = f"${{file:{credentials}}}"
        settings["region"] = str(location or "us-central1")
        if params.get("vertex_project"):
            settings["project"] = self.plain(params["vertex_project"], f"{path}.vertex_project")
        return True

    def account_name(self, kind: str, prefix: str, settings: dict[str, Any]) -> str:
        stem = prefix if kind == "openai_compatible" and prefix else kind.replace("_", "-")
        host = urlsplit(str(settings.get("base_url") or "")).hostname or ""
        label = host.split(".")[0] if host and not host.startswith("api.") else ""
        if host == "localhost" or re.fullmatch(r"[0-9.]+|\[?[0-9a-fA-F:]+\]?", host):
            label = "local"
        if kind == "bedrock":
            label = settings["region"]
        base = _slug(f"{stem}-{label}" if label and label not in stem else stem)
        taken = {a.name for a in self.accounts.values()}
        name, n = base, 2
        while name in taken:
            name, n = f"{base}-{n}", n + 1
        return name

    def model(self, account: _Account, kind: str, prefix: str, name: str,
              params: dict[str, Any], entry: dict[str, Any], path: str) -> str:  # fmt: skip
        for strip in ("converse/", "invoke/"):
            if kind == "bedrock" and name.startswith(strip):
                name = name[len(strip) :]
        key = _slug(name.replace("/", "--"))[:200]
        settings: dict[str, Any] = {}
        if kind == "azure_openai":
            settings["deployment"] = name
        elif key != name:
            settings["upstream_model"] = name
        info = entry.get("model_info") or {}
        cost_in = params.get("input_cost_per_token", info.get("input_cost_per_token"))
        cost_out = params.get("output_cost_per_token", info.get("output_cost_per_token"))
        if _number(cost_in):
            settings["input_per_mtok"] = _per_million(cost_in)
            settings["output_per_mtok"] = _per_million(cost_out) if _number(cost_out) else 0
            self.report.mapped.append(f"{path}: per-token costs → prices per million tokens")
        else:
            settings["unpriced"] = "allow"
            self.report.approximated.append(
                f"{path} ({entry.get('model_name')}): no price in the file (LiteLLM prices from "
                f"its model map): {account.name}/{key} is unpriced, budgets do not count its "
                "calls until input_per_mtok/output_per_mtok are set"
            )
        existing = account.models.get(key)
        if existing is not None and existing != settings:
            key = f"{key}-{len(account.models) + 1}"
        account.models[key] = settings
        return key

    # -- routing -------------------------------------------------------------------------------

    def virtual_models(self, taken: set[str]) -> dict[str, Any]:
        settings = {**(self.source.get("litellm_settings") or {}),
                    **(self.source.get("router_settings") or {})}  # fmt: skip
        strategy = self.strategy(settings)
        out: dict[str, Any] = {}
        for public, targets in self.groups.items():
            name = _slug(public)
            if name in taken:
                name = f"{name}-vm"
            if name != public:
                self.report.approximated.append(
                    f"model_name {public!r}: served as virtual model {name!r} (callers use it)"
                )
            self.group_names[public] = name
            out[name] = self.one_virtual_model(targets, strategy)
            streams = [t.stream_timeout for t in targets if t.stream_timeout is not None]
            if streams:
                out[name]["timeouts"] = {"first_token_s": min(min(streams), 3600.0)}
                self.report.approximated.append(
                    f"{public}: stream_timeout {min(streams)}s → timeouts.first_token_s (the "
                    "wait for a stream's first chunk)"
                )
        self.fallbacks(settings, out)
        self.retries(settings, out)
        self.aliases(settings, out)
        return out

    def strategy(self, settings: dict[str, Any]) -> str:
        routing = settings.get("routing_strategy")
        if routing in (None, "simple-shuffle"):
            return "weighted"
        if routing == "latency-based-routing":
            self.report.mapped.append("router_settings.routing_strategy: latency → latency")
            return "latency"
        self.report.approximated.append(
            f"router_settings.routing_strategy: {routing} → weighted (by rpm/tpm where given)"
        )
        return "weighted"

    def one_virtual_model(self, targets: list[_Target], strategy: str) -> dict[str, Any]:
        if len(targets) == 1:
            return {"targets": [{"model": targets[0].ref}]}
        weights = [t.rpm or t.tpm or 1 for t in targets]
        if strategy == "weighted":
            top = max(weights)
            return {"strategy": "weighted", "targets": [
                {"model": t.ref, "weight": max(1, round(1000 * w / top))}
                for t, w in zip(targets, weights, strict=True)]}  # fmt: skip
        return {"strategy": strategy, "targets": [{"model": t.ref} for t in targets]}

    def fallbacks(self, settings: dict[str, Any], out: dict[str, Any]) -> None:
        for item in settings.get("fallbacks") or []:
            for public, backups in item.items() if isinstance(item, dict) else []:
                name = self.group_names.get(public)
                if name is None:
                    self.report.unmapped.append(f"fallbacks: {public!r} is not a model_name here")
                    continue
                vm = out[name]
                extra = [t.ref for b in backups for t in self.groups.get(b, [])]
                if not extra:
                    continue
                if vm.get("strategy") == "weighted" and len(vm["targets"]) > 1:
                    self.report.approximated.append(
                        f"fallbacks: {public!r} balanced its deployments before falling back; "
                        "Custos tries them in order (priority), then the fallbacks"
                    )
                vm.pop("strategy", None)
                for target in vm["targets"]:
                    target.pop("weight", None)
                known = {t["model"] for t in vm["targets"]}
                vm["targets"] += [{"model": ref} for ref in extra if ref not in known]
                self.report.mapped.append(f"fallbacks: {public} → {', '.join(backups)}")
        for other in ("context_window_fallbacks", "content_policy_fallbacks",
                      "default_fallbacks"):  # fmt: skip
            if settings.get(other):
                self.report.unmapped.append(
                    f"{other}: Custos falls back on status codes (fallback_on), not on the "
                    "kind of error"
                )

    def retries(self, settings: dict[str, Any], out: dict[str, Any]) -> None:
        retries = _int(settings.get("num_retries"))
        if retries:
            for vm in out.values():
                vm["retry"] = {"attempts": min(retries + 1, 10)}
            self.report.mapped.append(
                f"num_retries: {retries} → retry.attempts {min(retries + 1, 10)}"
            )
        fails, cooldown = _int(settings.get("allowed_fails")), settings.get("cooldown_time")
        if fails:
            for vm in out.values():
                seconds = float(cooldown) if _number(cooldown) else 5.0
                vm["cooldown"] = {"failures": min(fails, 100), "window_s": 60.0,
                                  "cooldown_s": seconds}  # fmt: skip
            self.report.mapped.append("allowed_fails/cooldown_time → cooldown per target")

    def aliases(self, settings: dict[str, Any], out: dict[str, Any]) -> None:
        for alias, target in (settings.get("model_group_alias") or {}).items():
            target = target.get("model") if isinstance(target, dict) else target
            name = self.group_names.get(str(target))
            if name is None or not _NAME_OK.match(str(alias)) or alias in out:
                self.report.unmapped.append(f"model_group_alias {alias!r}: nothing to point at")
                continue
            out[str(alias)] = copy.deepcopy(out[name])
            self.report.mapped.append(f"model_group_alias {alias} → virtual model {alias}")

    # -- limits, budgets, teams, guardrails ---------------------------------------------------

    def rate_limits(self) -> list[dict[str, Any]]:
        rules = []
        for public, targets in self.groups.items():
            name = self.group_names[public]
            for unit, values in (("requests_per_minute", [t.rpm for t in targets]),
                                 ("tokens_per_minute", [t.tpm for t in targets])):  # fmt: skip
                if any(values) and all(values):
                    rules.append({"id": _slug(f"{name}-{unit.split('_')[0]}")[:64],
                                  "when": {"models": [name]}, "limit_to": sum(values),  # type: ignore[arg-type]
                                  "unit": unit})  # fmt: skip
                    self.report.approximated.append(
                        f"{public}: LiteLLM's per-deployment {unit.split('_')[0][:-1]} limits "
                        f"(capacity for routing) → one gateway limit of {sum(values)} "  # type: ignore[arg-type]
                        f"{unit.replace('_', ' ')} on {name}"
                    )
        return rules

    def budgets(self) -> list[dict[str, Any]]:
        settings = self.source.get("litellm_settings") or {}
        out = []
        if _number(settings.get("max_budget")):
            duration = str(settings.get("budget_duration") or "")
            period = _PERIODS.get(duration, "total" if not duration else "month")
            if duration and duration not in _PERIODS:
                self.report.approximated.append(f"budget_duration {duration} → period {period}")
            limit = str(Decimal(str(settings["max_budget"])))
            out.append({"id": "proxy-budget", "limit_usd": limit, "period": period})
            self.report.mapped.append(
                f"litellm_settings.max_budget → budget proxy-budget ({period})"
            )
        if _number(settings.get("max_end_user_budget")):
            out.append({"id": "per-user-budget", "applies_per": ["user"],
                        "limit_usd": str(Decimal(str(settings["max_end_user_budget"]))),
                        "period": "total"})  # fmt: skip
            self.report.approximated.append(
                "max_end_user_budget: LiteLLM's end user is the request's `user` field; Custos "
                "budgets the authenticated user (applies_per: user)"
            )
        return out

    def teams(self) -> dict[str, Any]:
        teams: dict[str, Any] = {}
        settings = self.source.get("litellm_settings") or {}
        for index, team in enumerate(settings.get("default_team_settings") or []):
            team_id = str((team or {}).get("team_id") or "")
            if not _NAME_OK.match(team_id):
                self.report.unmapped.append(f"default_team_settings[{index}]: team id {team_id!r}")
                continue
            teams[team_id] = {}
            others = sorted(set(team) - {"team_id"})
            self.report.mapped.append(f"default_team_settings[{index}]: team {team_id}")
            if others:
                self.report.unmapped.append(
                    f"default_team_settings[{index}]: {', '.join(others)} (per-team logging "
                    "callbacks: Custos exports one audit trail, docs/siem.md)"
                )
        return teams

    def guardrails(self) -> list[dict[str, Any]]:
        out = []
        for index, item in enumerate(self.source.get("guardrails") or []):
            path = f"guardrails[{index}]"
            params = (item or {}).get("litellm_params") or {}
            kind, mode = str(params.get("guardrail") or ""), params.get("mode") or "pre_call"
            name = _slug(str(item.get("guardrail_name") or f"guardrail-{index}"))
            modes = mode if isinstance(mode, list) else [mode]
            hook = "llm_output" if modes == ["post_call"] else "llm_input"
            ours = self.guardrail_type(kind)
            if ours is None:
                self.report.unmapped.append(
                    f"{path} ({name}): guardrail {kind!r} has no built-in equivalent (a "
                    "type: webhook guardrail can call a service)"
                )
                continue
            rule: dict[str, Any] = {"id": name, "hook": hook, "type": ours}
            if ours == "pii":
                rule["operation"] = "mutate"
            out.append(rule)
            self.report.approximated.append(
                f"{path} ({name}): {kind} → Custos's own {ours} detection on {hook}"
            )
            if not params.get("default_on"):
                self.report.approximated.append(
                    f"{path}: LiteLLM runs it when a request asks for it; Custos runs it on "
                    "every request its `when` matches (add a when to narrow it)"
                )
        return out

    @staticmethod
    def guardrail_type(kind: str) -> str | None:
        if kind in ("presidio", "pii_masking", "bedrock_pii"):
            return "pii"
        if kind in ("hide-secrets", "hide_secrets", "detect_secrets", "secret_detection"):
            return "secrets"
        if kind in ("lakera", "lakera_v2", "prompt_injection", "detect_prompt_injection"):
            return "prompt_injection"
        return None

    # -- the rest -----------------------------------------------------------------------------

    def leftovers(self) -> None:
        general = self.source.get("general_settings") or {}
        if general.get("master_key"):
            self.report.unmapped.append(
                "general_settings.master_key: Custos never takes a shared master key; the first "
                "admin and their token come from `custos init`"
            )
            self.report.commands.append("custos init --config custos.yaml --email you@example.com")
        for key in sorted(set(general) - {"master_key"}):
            self.report.unmapped.append(f"general_settings.{key}")
        litellm = self.source.get("litellm_settings") or {}
        handled = {"fallbacks", "num_retries", "allowed_fails", "cooldown_time", "max_budget",
                   "budget_duration", "max_end_user_budget", "default_team_settings",
                   "context_window_fallbacks", "content_policy_fallbacks", "default_fallbacks",
                   "routing_strategy", "model_group_alias", "request_timeout",
                   "timeout"}  # fmt: skip
        for key in sorted(set(litellm) - handled):
            self.report.unmapped.append(f"litellm_settings.{key}")
        router = self.source.get("router_settings") or {}
        for key in sorted(set(router) - handled):
            note = " (Custos shares counters through state.counters: redis://…)" if key.startswith(
                "redis") else ""  # fmt: skip
            self.report.unmapped.append(f"router_settings.{key}{note}")
        known = {"model_list", "litellm_settings", "router_settings", "general_settings",
                 "guardrails", "credential_list"}  # fmt: skip
        for key in sorted(set(self.source) - known):
            self.report.unmapped.append(f"{key} (top-level section)")
        for team in self.teams_seen:
            self.report.commands.append(f"custos teams members add {team} USER_EMAIL")
        self.report.commands.append(
            "for each LiteLLM virtual key (in its database): custos accounts create NAME --team "
            "TEAM, then custos tokens create --account NAME; a key's budget and rpm/tpm become "
            "budgets/rate_limits rules with when: {subjects: [virtualaccount:NAME]}"
        )


def convert(source: Any) -> tuple[dict[str, Any], Report]:
    """The Custos config (as a dict, in the file's order) for a parsed LiteLLM config."""
    if not isinstance(source, dict):
        raise NotLiteLLMConfig("a LiteLLM config is a YAML mapping")
    if "model_list" not in source:
        raise NotLiteLLMConfig("no model_list: not a LiteLLM proxy config")
    converter = _Converter(source)
    converter.deployments()
    providers = {a.name: {**a.settings, "models": a.models} for a in converter.accounts.values()}
    if not providers:
        raise NotLiteLLMConfig("no deployment in model_list could be converted (see the report)")
    config: dict[str, Any] = {"version": 1, "providers": providers}
    virtual = converter.virtual_models(set(providers))
    if virtual:
        config["virtual_models"] = virtual
    teams = converter.teams()
    converter.teams_seen = list(teams)
    if teams:
        config["teams"] = teams
    config["access"] = [{"id": "everyone-every-model", "subjects": ["*"], "models": ["*"]}]
    converter.report.approximated.append(
        "access: LiteLLM lets any valid key call any model unless the key or its team is "
        "restricted (in its database); the rule everyone-every-model does the same: narrow it"
    )
    for section, value in (("rate_limits", converter.rate_limits()),
                           ("budgets", converter.budgets()),
                           ("guardrails", converter.guardrails())):  # fmt: skip
        if value:
            config[section] = value
    converter.leftovers()
    return config, converter.report


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._") or "model"
    return slug[:64]


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str) and value.replace("_", "").isdigit():
        return int(value.replace("_", "")) or None
    return None


def _number(value: Any) -> bool:
    if isinstance(value, bool) or value is None:
        return False
    try:
        return Decimal(str(value)).is_finite()
    except InvalidOperation:
        return False


def _per_million(cost_per_token: Any) -> str:
    """USD per token as USD per million tokens, exact, at most six decimals."""
    price = (Decimal(str(cost_per_token)) * 1_000_000).quantize(Decimal("0.000001"))
    return format(price.normalize(), "f")
