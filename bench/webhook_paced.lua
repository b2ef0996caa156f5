-- wrk script for bench/ingest --steady: bench/webhook.lua's pre-signed requests, sent at an even pace.
--
-- wrk runs closed loops (wrk2, which has a rate setting, is not packaged by Debian) and hey paces but sends one
-- body with one signature again and again. Here wrk's delay() hook sets the pace: request k (counted over the
-- thread) is due at start + k / rate. A connection that is free claims the next due instant and waits for it;
-- when every connection is busy (the server is slow) the next instant passes unclaimed and the request goes
-- out late: that lateness is recorded ("slip"), not hidden, so a stalled server cannot slow the schedule
-- down unseen. After <count> requests the connections idle until wrk's -d ends the run (give -d a margin).
--
-- Usage: wrk -t1 -cN -d<seconds + margin> -s bench/webhook_paced.lua URL -- <prefix> <path> <rate> <count>
-- done() prints webhook.lua's "BENCH_JSON {...}" line, then "PACE_JSON {...}": the instants claimed, the
-- achieved rate, and the slip (ms: late sends over 1, 2, 5 and 10 ms, the 99th percentile and the maximum).

local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "webhook.lua")

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local clock = ffi.new("bench_timespec")

local function now_ms()
   ffi.C.clock_gettime(1, clock) -- CLOCK_MONOTONIC
   return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
end

local closed_loop_init = init

function init(args)
   closed_loop_init(args)
   interval = 1000 / tonumber(args[3])
   limit = tonumber(args[4])
   claimed = 0
   start = nil
   first_ms = 0
   last_ms = 0
   slip_max = 0
   late1, late2, late5, late10 = 0, 0, 0, 0
   slip_hist = {} -- whole milliseconds late -> requests
   slips = ""
end

function delay()
   if claimed >= limit then
      return 3600000 -- all sent: idle until wrk's -d ends the run
   end
   local now = now_ms()
   if start == nil then
      start = now + 20
      first_ms = start
   end
   local at = start + claimed * interval
   claimed = claimed + 1
   local wait = at - now
   if wait < 0 then
      local late = -wait
      if late > slip_max then slip_max = late end
      if late > 1 then late1 = late1 + 1 end
      if late > 2 then late2 = late2 + 1 end
      if late > 5 then late5 = late5 + 1 end
      if late > 10 then late10 = late10 + 1 end
      local bucket = math.floor(late)
      slip_hist[bucket] = (slip_hist[bucket] or 0) + 1
   else
      slip_hist[0] = (slip_hist[0] or 0) + 1
   end
   last_ms = math.max(at, now)
   if claimed == limit then -- every instant is claimed: hand the histogram over as a string for done()
      local parts = {}
      for ms, n in pairs(slip_hist) do
         parts[#parts + 1] = ms .. ":" .. n
      end
      slips = table.concat(parts, ",")
   end
   if wait <= 0 then
      return 0
   end
   return math.floor(wait + 0.5)
end

local closed_loop_done = done

function done(summary, latency, requests)
   closed_loop_done(summary, latency, requests)
   local claimed_total, late = 0, { 0, 0, 0, 0 }
   local span, worst, hist = 0, 0, {}
   for _, thread in ipairs(bench_threads) do
      claimed_total = claimed_total + thread:get("claimed")
      late[1] = late[1] + thread:get("late1")
      late[2] = late[2] + thread:get("late2")
      late[3] = late[3] + thread:get("late5")
      late[4] = late[4] + thread:get("late10")
      span = math.max(span, thread:get("last_ms") - thread:get("first_ms"))
      worst = math.max(worst, thread:get("slip_max"))
      for ms, n in string.gmatch(thread:get("slips"), "(%d+):(%d+)") do
         hist[tonumber(ms)] = (hist[tonumber(ms)] or 0) + tonumber(n)
      end
   end
   local p99, seen, keys = 0, 0, {}
   for ms in pairs(hist) do keys[#keys + 1] = ms end
   table.sort(keys)
   for _, ms in ipairs(keys) do
      seen = seen + hist[ms]
      if seen >= 0.99 * claimed_total then
         p99 = ms + 1 -- the upper edge of the 1 ms bucket
         break
      end
   end
   io.write(string.format(
      'PACE_JSON {"claimed": %d, "span_ms": %.1f, "rate": %.1f, "late_1ms": %d, "late_2ms": %d, "late_5ms": %d, '
         .. '"late_10ms": %d, "slip_p99_ms": %d, "slip_max_ms": %.1f}\n',
      claimed_total, span, span > 0 and (claimed_total - 1) / span * 1000 or 0, late[1], late[2], late[3],
      late[4], p99, worst))
end
