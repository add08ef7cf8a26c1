-- wrk script for the HTTP benchmarks (bench/load.py runs it).
--   wrk -t1 -cC -d60s -s bench/wrk.lua URL -- MODE COUNT MARKER [FILE]
-- MODE "health": GET /health. MODE "post": POST / with X-Amz-Target and one body per line of
-- FILE (the line is "<Operation>\t<json>"), each line used once, in order.
-- After COUNT responses the thread stops and writes the file MARKER; wrk itself only ends at
-- its -d limit, so bench/load.py sends it SIGINT on seeing MARKER (wrk then reports the time
-- actually elapsed). done() prints one JSON line with the figures.

local mode, count, marker, file
local reqs = {}
local sent, received, non2xx = 0, 0, 0

function init(args)
  mode = args[1]
  count = tonumber(args[2])
  marker = args[3]
  file = args[4]
  if mode == "post" then
    for line in io.lines(file) do
      local op, body = line:match("^([^\t]+)\t(.*)$")
      reqs[#reqs + 1] = wrk.format("POST", "/", {
        ["X-Amz-Target"] = "CodePipeline_20150709." .. op,
        ["Content-Type"] = "application/x-amz-json-1.1",
      }, body)
    end
  else
    reqs[1] = wrk.format("GET", "/health")
  end
end

function request()
  sent = sent + 1
  if mode == "post" then
    local r = reqs[sent]
    if r == nil then
      return wrk.format("GET", "/health")  -- never reached when FILE has enough lines
    end
    return r
  end
  return reqs[1]
end

function response(status, headers, body)
  received = received + 1
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
  if received == count then
    local f = io.open(marker, "w")
    f:write("done\n")
    f:close()
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"errors_connect":%d,"errors_read":%d,' ..
    '"errors_write":%d,"errors_status":%d,"errors_timeout":%d,' ..
    '"lat_mean_us":%.1f,"lat_p50_us":%d,"lat_p90_us":%d,"lat_p99_us":%d,' ..
    '"lat_p999_us":%d,"lat_max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
