#!/usr/bin/env bash
# make bench: install what the benchmark needs if it is missing, then run bench/run.py with the
# project's virtualenv. Arguments go to run.py (--quick, --out FILE, --enforce, --compare,
# --instructions, --latency, --mcp, --soak [--requests N]); knobs are environment variables
# (BENCH_DURATION, BENCH_CONFIG, ...; see bench/README.md).
# run.py owns every process it starts: it stops them on exit, on Ctrl-C and on SIGTERM, and they
# get SIGTERM from the kernel (PR_SET_PDEATHSIG) if run.py itself is killed.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v hey >/dev/null || missing+=(hey)
command -v taskset >/dev/null || missing+=(util-linux)
if [[ " $* " == *" --instructions"* ]]; then
  command -v valgrind >/dev/null || missing+=(valgrind)
fi
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "bench: ${missing[*]} missing; run as root or: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "bench: installing ${missing[*]} with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The `bench` extra: the MCP SDK, whose FastMCP is the tool server of --mcp, and matplotlib
# for the plot of --soak.
if [[ ! -x .venv/bin/python ]]; then
  echo "bench: creating .venv and installing custos into it" >&2
  python3 -m venv .venv
  .venv/bin/pip install -q -e '.[bench]'
elif ! .venv/bin/python -c 'import custos, uvloop, httptools, mcp, matplotlib' 2>/dev/null; then
  .venv/bin/pip install -q -e '.[bench]'
fi

exec .venv/bin/python bench/run.py "$@"
