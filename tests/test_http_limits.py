"""What an unauthenticated or misbehaving client can make the gateway hold: metric series, header
bytes, connections that never finish their head or body.

Label values must come from bounded sets (route templates, status codes, the config's names), so
odd paths and unknown model names leave ``/metrics`` as it was. The HTTP layer bounds a request
head's size (431) and the time its head and body may take (408), so a slow or endless client
costs a bounded amount of memory for a bounded time.
"""

from __future__ import annotations

import re
import uuid

import httpx

from tests.conftest import GatewayProcess

ROUTE_TEMPLATES = {"/v1/chat/completions", "/v1/embeddings", "/v1/messages"}
_ROUTE_LABEL = re.compile(r'route="([^"]*)"')


def metrics_text(gateway: GatewayProcess) -> str:
    return httpx.get(f"{gateway.url}/metrics", timeout=10).text


def test_metric_labels_stay_bounded_under_odd_paths_and_unknown_names(gateway) -> None:
    marker = uuid.uuid4().hex[:12]
    chat = {"model": "openai-main/gpt-5.5", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        for slashes in range(1, 40):
            for route in ROUTE_TEMPLATES:
                http.post(route + "/" * slashes, json=chat)  # unauthenticated
        authed = {**gateway.headers, "x-custos-metadata": f'{{"k": "{marker}"}}'}
        for n in range(20):
            for route in ROUTE_TEMPLATES:
                body = {**chat, "model": f"{marker}-{n}", "max_tokens": 5, "input": "x"}
                assert http.post(route, json=body, headers=authed).status_code == 404
    text = metrics_text(gateway)
    assert marker not in text
    assert set(_ROUTE_LABEL.findall(text)) <= ROUTE_TEMPLATES
