-- wrk script for bench/run.py --mcp (bench/mcp.py): POST one MCP tools/call after another on an
-- open session, and report the run as one JSON line (prefixed WRK_JSON) that run.py parses.
-- BENCH_BODY is the JSON-RPC message with the placeholder __ID__ where its id goes: every request
-- gets an id of its own, as a session's requests in flight must (the server answers by id).
-- Headers: Mcp-Session-Id (BENCH_MCP_SESSION), MCP-Protocol-Version (BENCH_MCP_VERSION), the
-- Accept header the transport requires, and Authorization when BENCH_AUTH is set (the gateway).
-- Every answer is read: "results" counts the 200s whose body is a JSON-RPC result that is not a
-- tool error; "other" everything else (an HTTP error, a JSON-RPC error, an event stream).

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["Mcp-Session-Id"] = os.getenv("BENCH_MCP_SESSION")
wrk.headers["MCP-Protocol-Version"] = os.getenv("BENCH_MCP_VERSION")
local auth = os.getenv("BENCH_AUTH") or ""
if auth ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. auth
end

local before, after = string.match(os.getenv("BENCH_BODY"), "^(.-)__ID__(.*)$")
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  sent, results, other = 0, 0, 0
end

function request()
  sent = sent + 1
  return wrk.format(nil, nil, nil, before .. sent .. after)
end

function response(status, headers, body)
  if status == 200 and string.find(body, '{"jsonrpc":"2.0","id":', 1, true) == 1
      and string.find(body, '"result":', 1, true)
      and not string.find(body, '"isError":true', 1, true) then
    results = results + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local ok, bad = 0, 0
  for _, thread in ipairs(threads) do
    ok = ok + thread:get("results")
    bad = bad + thread:get("other")
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"non2xx":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"timeouts":%d,"latency_p50_us":%d,"latency_p99_us":%d,' ..
    '"latency_mean_us":%.1f,"latency_max_us":%d,"results":%d,"other":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read, e.write,
    e.timeout, latency:percentile(50), latency:percentile(99), latency.mean, latency.max, ok, bad))
end
