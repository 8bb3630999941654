"""Config and secrets mounted as Kubernetes mounts them (``custos.yaml -> ..data/custos.yaml``,
``..data -> ..<timestamp>``), updated as the kubelet updates them (a new directory, ``..data``
swapped by one rename): the gateway reloads in place, for the config and for a Secret file the
config references."""

from __future__ import annotations

import time
from pathlib import Path

from tests.cluster_helpers import configmap_mount, configmap_update
from tests.conftest import MOCK_KEY, GatewayProcess, MockProvider
from tests.limits_helpers import chat, provider_config, wait_for


def _config(mock_url: str, secrets: Path, rpm: int) -> str:
    text = provider_config(mock_url).replace(
        "${env:CUSTOS_TEST_MOCK_KEY}", f"${{file:{secrets}/mock-key}}"
    )
    return text + (
        f"rate_limits:\n  - {{id: rpm, when: {{}}, limit_to: {rpm}, unit: requests_per_minute}}\n"
    )


def test_a_configmap_and_a_secret_updated_by_symlink_swap_are_reloaded_in_place(
    mock_provider: MockProvider, tmp_path: Path
) -> None:
    config_dir, secrets = tmp_path / "config", tmp_path / "secrets"
    configmap_mount(secrets, "mock-key", "wrong-key")
    configmap_mount(config_dir, "custos.yaml", _config(mock_provider.url, secrets, 100))
    # GatewayProcess writes its file through the link, into the mounted version; it serves
    # from tmp_path, so the link is what it watches.
    (tmp_path / "custos.yaml").symlink_to(config_dir / "custos.yaml")
    gw = GatewayProcess(_config(mock_provider.url, secrets, 100), tmp_path)
    try:
        assert chat(gw, gw.token).status_code == 502  # the provider refuses the wrong key
        before = gw.revision()
        configmap_update(config_dir, "custos.yaml", _config(mock_provider.url, secrets, 7))
        assert wait_for(lambda: gw.revision() != before, timeout=5), gw.log()
        configmap_update(secrets, "mock-key", MOCK_KEY)
        assert wait_for(lambda: chat(gw, gw.token).status_code == 200, timeout=5), gw.log()
        response = chat(gw, gw.token)
        assert response.headers["x-ratelimit-limit-requests"] == "7"
        assert "a referenced file changed" in gw.log()
        time.sleep(0.5)  # no reload loop: each swap is one reload
        assert gw.metric("custos_config_reloads_total", result="applied") == 2
    finally:
        gw.stop()
