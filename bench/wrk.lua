-- wrk script for bench/run.py: POST the body in BENCH_BODY with BENCH_AUTH as the bearer token,
-- and report the run as one JSON line (prefixed WRK_JSON) that run.py parses.
-- No response() callback: it would make wrk hand every body to Lua and slow the load generator.

wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_AUTH") or "bench")

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"non2xx":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"timeouts":%d,"latency_p50_us":%d,"latency_p99_us":%d,' ..
    '"latency_mean_us":%.1f,"latency_max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read, e.write,
    e.timeout, latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
end
