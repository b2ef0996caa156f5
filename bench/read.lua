-- wrk script for bench/read: GET /v1/customers/{id} for random customers, optionally conditional.
--
-- bench/read.py writes the ids beforehand, one a line: "<id>\t<ETag as the tracker sends it>". Every thread
-- builds one request per line and then sends them in random order (its own random sequence).
--   mode "get":         plain GET, expects 200
--   mode "conditional": GET with If-None-Match set to the customer's current ETag, expects 304
--
-- Usage: wrk ... -s bench/read.lua URL -- <ids file> <api key or "-"> <get|conditional>
-- done() prints one line "BENCH_JSON {...}" with the counts and latency percentiles (microseconds).

local threads = {}
local count = 0

function setup(thread)
   count = count + 1
   thread:set("tid", count)
   table.insert(threads, thread)
end

function init(args)
   local file = args[1]
   local key = args[2] or "-"
   local mode = args[3] or "get"
   math.randomseed(tid * 7919 + os.time())
   pool = {}
   local n = 0
   for line in io.lines(file) do
      local id, etag = line:match("^(%d+)\t(.*)$")
      local headers = {
         ["Host"] = wrk.host .. ":" .. wrk.port,
         ["Accept"] = "application/json",
         ["User-Agent"] = "bench-read/1.0",
      }
      if key ~= "-" then
         headers["Authorization"] = "Bearer " .. key
      end
      if mode == "conditional" then
         headers["If-None-Match"] = etag
      end
      n = n + 1
      pool[n] = wrk.format("GET", "/v1/customers/" .. id, headers)
   end
   pool_size = n
   expect = (mode == "conditional") and 304 or 200
   sent = 0
   ok = 0
   other = 0
   statuses = ""
   seen = {}
end

function request()
   sent = sent + 1
   return pool[math.random(pool_size)]
end

function response(status, headers, body)
   if status == expect then
      ok = ok + 1
   else
      other = other + 1
      if not seen[status] then
         seen[status] = true
         statuses = statuses .. status .. " "
      end
   end
end

function done(summary, latency, requests)
   local sent_total, ok_total, other_total = 0, 0, 0
   local codes = ""
   for _, thread in ipairs(threads) do
      sent_total = sent_total + thread:get("sent")
      ok_total = ok_total + thread:get("ok")
      other_total = other_total + thread:get("other")
      codes = codes .. thread:get("statuses")
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"duration_us": %d, "completed": %d, "sent": %d, "ok": %d, "unexpected": %d, '
         .. '"codes": "%s", "connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, '
         .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
      summary.duration, summary.requests, sent_total, ok_total, other_total, codes,
      e.connect, e.read, e.write, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
