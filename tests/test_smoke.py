import httpx


def test_gateway_serves_a_chat_completion(gateway):
    body = {"model": "openai-main/gpt-5.5", "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(
        f"{gateway.base_url}/chat/completions", json=body, headers=gateway.headers
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-custos-served-by"] == "openai-main/gpt-5.5"
