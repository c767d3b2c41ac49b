-- wrk script: POST a JSON body, print a machine-readable summary at the end.
-- The body comes from the file named by BENCH_BODY_FILE, else from BENCH_BODY,
-- else benchmarks/body.json (relative to the working directory).
local body = os.getenv("BENCH_BODY")
local path = os.getenv("BENCH_BODY_FILE") or (body == nil and "benchmarks/body.json" or nil)
if path ~= nil then
  local f = assert(io.open(path, "rb"))
  body = f:read("*a")
  f:close()
end

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"

-- One line, prefixed so run.py finds it among wrk's own output. Latencies in
-- microseconds; errors.status counts responses with status >= 400 (wrk's rule).
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,' ..
    '"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
