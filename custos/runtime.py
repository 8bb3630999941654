"""One revision of the config file, compiled for serving.

``Runtime`` is built once per loaded revision and never changed: a reload builds a new one and
swaps the reference, so a request keeps the revision it started with to its end.
"""

from __future__ import annotations

from custos.config.loader import LoadedConfig
from custos.config.schema import Config, ProviderSettings, RetrySettings, VirtualModelSettings
from custos.emails import email_key
from custos.identity.jwt import JWTVerifier
from custos.policy.access import AccessGrant, AccessPolicy
from custos.policy.limits import LimitsPolicy
from custos.policy.metadata import MetadataContract
from custos.policy.patterns import ModelPattern
from custos.policy.residency import ResidencyPolicy
from custos.pricing import ModelPrice
from custos.providers.base import ProviderAdapter
from custos.providers.registry import adapter_for
from custos.routing.targets import ModelRoute, ModelTarget

#: A model named directly (``account/model``) gets one attempt and no fallback.
_DIRECT_RETRY = RetrySettings(attempts=1, on_status=[])


class Runtime:
    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded
        self.config = loaded.config
        self.revision = loaded.revision
        self.targets: dict[str, ModelTarget] = {}
        for account, settings in self.config.providers.items():
            adapter = adapter_for(account, settings)
            for model in settings.models:
                target = _target(account, model, settings, adapter)
                self.targets[target.name] = target
        self.routes: dict[str, ModelRoute] = {
            name: ModelRoute(name, (t,), "priority", (1,), _DIRECT_RETRY, frozenset(), False)
            for name, t in self.targets.items()
        }
        for name, vm in self.config.virtual_models.items():
            self.routes[name] = self._virtual_route(name, vm)
        #: Budgets and rate limits (stages 4 and 5), with each route's reservation prices.
        self.limits = LimitsPolicy(self.config, self.routes)
        self.access = AccessPolicy(
            [
                AccessGrant(
                    id=rule.id or f"access[{index}]",
                    subjects=frozenset(_subject_key(s) for s in rule.subjects),
                    models=ModelPattern(rule.models),
                    tools=ModelPattern(rule.mcp_tools),
                )
                for index, rule in enumerate(self.config.access)
            ]
        )
        self.jwt = JWTVerifier(self.config.identity.idp, _teams_by_email(self.config))
        #: Residency (part of stage 7): which targets may serve which requests.
        self.residency = ResidencyPolicy.build(self.config.residency, self.targets)
        self.metadata = MetadataContract.build(
            self.config.metadata.required, self.config.metadata.allowed
        )

    def _virtual_route(self, name: str, vm: VirtualModelSettings) -> ModelRoute:
        return ModelRoute(
            name=name,
            targets=tuple(self.targets[t.model] for t in vm.targets),
            strategy=vm.strategy,
            weights=tuple(t.weight for t in vm.targets),
            retry=vm.retry,
            fallback_on=frozenset(vm.fallback_on),
            virtual=True,
            timeouts=vm.timeouts,
            cooldown=vm.cooldown,
            sticky=vm.sticky.metadata if vm.sticky is not None else None,
        )


def _teams_by_email(config: Config) -> dict[str, tuple[str, ...]]:
    teams: dict[str, list[str]] = {}
    for name, team in config.teams.items():
        for email in {*team.members, *team.managers}:
            teams.setdefault(email_key(email), []).append(name)
    return {email: tuple(names) for email, names in teams.items()}


def _subject_key(subject: str) -> str:
    """Users are compared by case-folded email, as the directory names them."""
    kind, _, name = subject.partition(":")
    return f"user:{email_key(name)}" if kind == "user" else subject


def _target(
    account: str, model: str, settings: ProviderSettings, adapter: ProviderAdapter
) -> ModelTarget:
    model_settings = settings.models[model]
    upstream = model_settings.deployment or model_settings.upstream_model or model
    name = f"{account}/{model}"
    return ModelTarget(
        name=name,
        account=account,
        model=model,
        upstream_model=upstream,
        adapter=adapter,
        price=ModelPrice.from_settings(model_settings),
        region=settings.region,
        connect_timeout_s=settings.connect_timeout_s,
        timeout_s=settings.timeout_s,
        max_response_bytes=settings.max_response_bytes,
        served_by=name.encode(),
    )
