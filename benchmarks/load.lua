-- wrk load script: every request carries new messageIds, so nothing is deduplicated away.
-- Environment: BATCH (messages per request; 1 = single-event /v1/track), AUTH (base64 "key:"),
-- VISITORS (size of the anonymous-visitor pool, so identity lookups hit existing contacts).
local batch = tonumber(os.getenv("BATCH") or "100")
local auth = os.getenv("AUTH")
local visitors = tonumber(os.getenv("VISITORS") or "50000")
local run = os.getenv("RUN") or "r"
-- BROWSER=1: what a browser sends from another site: one event to analytics.js' /v1/t as
-- text/plain with the key in the body (as sendBeacon does) and the page's Origin.
local browser = os.getenv("BROWSER") == "1"
local write_key = os.getenv("WRITE_KEY")
local origin = os.getenv("ORIGIN")
local threads = {}
counter = 0  -- global: done() reads it from each thread
tid = 0  -- global: setup() gives each thread its own

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

local function message(n)
  local p = n % 97
  return '{"type":"track","event":"Product Viewed","anonymousId":"v' .. (n % visitors) ..
    '","messageId":"' .. run .. '-' .. tid .. '-' .. n ..
    '","properties":{"product_id":"p' .. p .. '","price":19.9,"category":"shoes"},' ..
    '"context":{"library":{"name":"analytics.js","version":"2.1.0"},"page":{"url":"https://shop.example/p/' .. p ..
    '","path":"/p/' .. p .. '","referrer":"https://shop.example/"},"userAgent":"Mozilla/5.0 (X11; Linux x86_64)",' ..
    '"ip":"203.0.113.7","locale":"it-IT"}}'
end

request = function()
  local path, body
  if browser then
    counter = counter + 1
    local m = message(counter * 7 + tid)
    body = m:sub(1, -2) .. ',"writeKey":"' .. write_key .. '"}'
    return wrk.format("POST", "/v1/t", {["Content-Type"] = "text/plain;charset=UTF-8", ["Origin"] = origin}, body)
  elseif batch == 1 then
    counter = counter + 1
    path, body = "/v1/track", message(counter * 7 + tid)
  else
    local parts = {}
    for i = 1, batch do
      counter = counter + 1
      parts[i] = message(counter * 7 + tid)
    end
    path, body = "/v1/batch", '{"batch":[' .. table.concat(parts, ",") .. ']}'
  end
  return wrk.format("POST", path, {["Content-Type"] = "application/json", ["Authorization"] = "Basic " .. auth}, body)
end

-- messageIds are RUN-<thread>-<counter * 7 + thread>; a request holds BATCH consecutive counters,
-- so the benchmark can tell from the store which requests were stored, and whether wholly.
done = function(summary, latency, requests)
  local non2xx = summary.errors.status
  local generated = 0
  for _, thread in ipairs(threads) do
    generated = generated + thread:get("counter")
  end
  io.write(string.format(
    'WRKJSON {"requests":%d,"generated_messages":%d,"threads":%d,"duration_us":%d,"non_2xx":%d,"socket_errors":%d,"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f}\n',
    summary.requests, generated, #threads, summary.duration, non2xx,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
