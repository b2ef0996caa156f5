-- wrk script for bench/read's list part: GET /v1/customers?... over a fixed set of paths (one filter shape).
--
-- bench/read.py walks each chain first (the first page and the cursor pages after it, checking every item
-- against the filter) and writes the paths it requested, one a line. Every request here is one of them,
-- chosen at random; every answer must be 200.
--
-- Usage: wrk ... -s bench/read_list.lua URL -- <paths file> <api key>
-- done() prints one line "BENCH_JSON {...}" with the counts and latency percentiles (microseconds).

local threads = {}
local count = 0

function setup(thread)
   count = count + 1
   thread:set("tid", count)
   table.insert(threads, thread)
end

function init(args)
   math.randomseed(tid * 7919 + os.time())
   pool = {}
   local n = 0
   for path in io.lines(args[1]) do
      n = n + 1
      pool[n] = wrk.format("GET", path, {
         ["Host"] = wrk.host .. ":" .. wrk.port,
         ["Accept"] = "application/json",
         ["User-Agent"] = "bench-read/1.0",
         ["Authorization"] = "Bearer " .. args[2],
      })
   end
   pool_size = n
   ok = 0
   other = 0
   statuses = ""
   seen = {}
end

function request()
   return pool[math.random(pool_size)]
end

function response(status, headers, body)
   if status == 200 then
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
   local ok_total, other_total = 0, 0
   local codes = ""
   for _, thread in ipairs(threads) do
      ok_total = ok_total + thread:get("ok")
      other_total = other_total + thread:get("other")
      codes = codes .. thread:get("statuses")
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"duration_us": %d, "completed": %d, "ok": %d, "unexpected": %d, "codes": "%s", '
         .. '"socket_errors": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
      summary.duration, summary.requests, ok_total, other_total, codes,
      e.connect + e.read + e.write + e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
