-- wrk script for bench/run.sh --soak (bench/soak.py): send a fixed mix of request kinds, count
-- the answers by status, stop after BENCH_SOAK_REQUESTS answers.
--   BENCH_SOAK_KINDS     a file, one kind a line: "name<TAB>bearer token<TAB>JSON body"
--   BENCH_SOAK_ORDER     the kinds' line numbers (1-based), comma-separated: one cycle of the mix
--   BENCH_SOAK_REQUESTS  stop after this many answers
--   BENCH_SOAK_PROGRESS  a file rewritten every 1,000 answers (and at the stop) with the counts,
--                        which soak.py reads to plot memory against requests served
-- Only wrk's -t1 is supported: the counts and the stop are per thread.

local requests = {}
local order = {}
local next_slot = 0
local answers = 0
local streams = 0 -- 200 answers that are event streams (ended by [DONE])
local statuses = {}
local limit = tonumber(os.getenv("BENCH_SOAK_REQUESTS") or "1000000")
local progress = os.getenv("BENCH_SOAK_PROGRESS")

function init(args)
  local path = wrk.path
  for line in io.lines(os.getenv("BENCH_SOAK_KINDS")) do
    local _, token, body = line:match("^([^\t]+)\t([^\t]+)\t(.+)$")
    local headers = {
      ["Content-Type"] = "application/json",
      ["Authorization"] = "Bearer " .. token,
    }
    table.insert(requests, wrk.format("POST", path, headers, body))
  end
  for index in os.getenv("BENCH_SOAK_ORDER"):gmatch("%d+") do
    table.insert(order, requests[tonumber(index)])
  end
end

function request()
  next_slot = next_slot % #order + 1
  return order[next_slot]
end

local function write_progress()
  if not progress then
    return
  end
  local parts = {}
  for status, n in pairs(statuses) do
    table.insert(parts, string.format('"%d":%d', status, n))
  end
  local tmp = progress .. ".tmp"
  local fh = io.open(tmp, "w")
  fh:write(string.format('{"answers":%d,"streams":%d,"statuses":{%s}}\n',
    answers, streams, table.concat(parts, ",")))
  fh:close()
  os.rename(tmp, progress) -- soak.py never reads a half-written file
end

function response(status, headers, body)
  if answers >= limit then
    return -- answers read in the same turn of the loop as the stop are not counted
  end
  answers = answers + 1
  statuses[status] = (statuses[status] or 0) + 1
  if status == 200 and body:find("data: [DONE]", 1, true) then
    streams = streams + 1
  end
  if answers % 1000 == 0 or answers >= limit then
    write_progress()
  end
  if answers >= limit then
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"non2xx":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"timeouts":%d,"latency_p50_us":%d,"latency_p99_us":%d,' ..
    '"latency_mean_us":%.1f,"latency_max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read, e.write,
    e.timeout, latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
end
