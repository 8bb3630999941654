#!/usr/bin/env bash
# `make run`: the mock provider and the gateway on the quickstart config, in the foreground.
# The gateway listens on $CUSTOS_PORT (default 8787); the mock on 9999, as the config says.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
GATEWAY_PORT=${CUSTOS_PORT:-8787}
MOCK_PORT=9999
export MOCK_PROVIDER_KEY=${MOCK_PROVIDER_KEY:-mock-key}

"$BIN/custos" mock-provider --host 127.0.0.1 --port "$MOCK_PORT" --api-key "$MOCK_PROVIDER_KEY" &
MOCK_PID=$!
trap 'kill $MOCK_PID 2>/dev/null || true' EXIT

"$BIN/custos" config check examples/quickstart.yaml
# The first admin's token is shown once by `custos init`; keep it for the next `make run`.
TOKEN_FILE=.run/quickstart.token
mkdir -p .run
if [ ! -s "$TOKEN_FILE" ]; then
  if ! (umask 077 && "$BIN/custos" init --config examples/quickstart.yaml \
      --email admin@example.com > "$TOKEN_FILE.new"); then
    rm -f "$TOKEN_FILE.new"
    echo "custos.db has an admin but $TOKEN_FILE is gone: remove custos.db* to start over" >&2
    exit 1
  fi
  mv "$TOKEN_FILE.new" "$TOKEN_FILE"
fi
TOKEN=$(cat "$TOKEN_FILE")
"$BIN/custos" serve --config examples/quickstart.yaml --port "$GATEWAY_PORT" &
GATEWAY_PID=$!
trap 'kill $GATEWAY_PID $MOCK_PID 2>/dev/null || true' EXIT

for _ in $(seq 1 100); do
  if "$BIN/python" -c "import sys, urllib.request as u; u.urlopen(sys.argv[1], timeout=1)" \
      "http://127.0.0.1:$GATEWAY_PORT/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$GATEWAY_PID" 2>/dev/null; then echo "the gateway did not start" >&2; exit 1; fi
  sleep 0.1
done

cat <<MSG

Custos is serving on http://127.0.0.1:$GATEWAY_PORT in front of a local mock provider.

Your admin token (admin@example.com; also in $TOKEN_FILE):

  export CUSTOS_TOKEN=$TOKEN

  curl http://127.0.0.1:$GATEWAY_PORT/v1/chat/completions \\
    -H "Authorization: Bearer \$CUSTOS_TOKEN" \\
    -H 'Content-Type: application/json' \\
    -d '{"model": "chat-default", "messages": [{"role": "user", "content": "Hello"}]}'

With the openai SDK (pip install openai), CUSTOS_TOKEN exported:

  python - <<'PY'
from openai import OpenAI
import os
client = OpenAI(base_url="http://127.0.0.1:$GATEWAY_PORT/v1", api_key=os.environ["CUSTOS_TOKEN"])
reply = client.chat.completions.create(
    model="chat-default", messages=[{"role": "user", "content": "Hello"}])
print(reply.choices[0].message.content)
PY

Models:  curl -H "Authorization: Bearer \$CUSTOS_TOKEN" http://127.0.0.1:$GATEWAY_PORT/v1/models
Admin:   .venv/bin/custos tokens list      (reads \$CUSTOS_TOKEN)
Stop:    Ctrl-C
MSG
wait "$GATEWAY_PID"
