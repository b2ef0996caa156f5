-- wrk script for bench/ingest: replays pre-signed Blaaiz webhooks, each one sent once.
--
-- wrk's LuaJIT has no HMAC, so bench/ingest.py writes the requests beforehand, one file per wrk thread
-- ("<prefix>.<thread number>", one request a line: "<timestamp>\t<hex signature>\t<body>"). Each thread
-- sends its own lines in order, so no two requests share an event id or content. If a thread runs out, it
-- starts again from its first line and counts "wrapped" (for the tracker those repeats are duplicates, and
-- bench/ingest.py reports the run as invalid).
--
-- Usage: wrk ... -s bench/webhook.lua URL -- <prefix> [path]
-- done() prints one line "BENCH_JSON {...}" with the counts (2xx answers also by their "status": accepted,
-- duplicate, ignored) and latency percentiles (microseconds). bench/webhook_paced.lua sends the same requests
-- at an even pace.

bench_threads = {}
local count = 0

function setup(thread)
   count = count + 1
   thread:set("tid", count)
   table.insert(bench_threads, thread)
end

function init(args)
   local prefix = args[1]
   local path = args[2] or "/webhooks/blaaiz"
   pool = {}
   local n = 0
   for line in io.lines(prefix .. "." .. tid) do
      local ts, sig, body = line:match("^(%d+)\t(%x+)\t(.*)$")
      n = n + 1
      pool[n] = wrk.format("POST", path, {
         ["Host"] = wrk.host .. ":" .. wrk.port,
         ["Content-Type"] = "application/json",
         ["User-Agent"] = "Blaaiz-Webhooks/1.0 (bench)",
         ["x-blaaiz-timestamp"] = ts,
         ["x-blaaiz-signature"] = sig,
      }, body)
   end
   pool_size = n
   sent = 0
   wrapped = 0
   ok = 0
   other = 0
   accepted = 0
   duplicate = 0
   ignored = 0
   statuses = ""
   seen = {}
   checked = tid ~= 1
end

function request()
   if not checked then
      -- wrk calls request() once on its first thread before the run, to check the script, and sends nothing
      -- of it: that call takes no line.
      checked = true
      return pool[1]
   end
   sent = sent + 1
   local i = sent
   if i > pool_size then
      wrapped = wrapped + 1
      i = (i - 1) % pool_size + 1
   end
   return pool[i]
end

function response(status, headers, body)
   if status >= 200 and status < 300 then
      ok = ok + 1
      if body:find('"status":"accepted"', 1, true) then
         accepted = accepted + 1
      elseif body:find('"status":"duplicate"', 1, true) then
         duplicate = duplicate + 1
      elseif body:find('"status":"ignored"', 1, true) then
         ignored = ignored + 1
      end
   else
      other = other + 1
      if not seen[status] then
         seen[status] = true
         statuses = statuses .. status .. " "
      end
   end
end

function done(summary, latency, requests)
   local sent_total, ok_total, other_total, wrapped_total = 0, 0, 0, 0
   local accepted_total, duplicate_total, ignored_total = 0, 0, 0
   local codes = ""
   for _, thread in ipairs(bench_threads) do
      sent_total = sent_total + thread:get("sent")
      ok_total = ok_total + thread:get("ok")
      other_total = other_total + thread:get("other")
      wrapped_total = wrapped_total + thread:get("wrapped")
      accepted_total = accepted_total + thread:get("accepted")
      duplicate_total = duplicate_total + thread:get("duplicate")
      ignored_total = ignored_total + thread:get("ignored")
      codes = codes .. thread:get("statuses")
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"duration_us": %d, "completed": %d, "sent": %d, "ok": %d, "non_2xx": %d, "wrapped": %d, '
         .. '"accepted": %d, "duplicate": %d, "ignored": %d, "codes": "%s", "connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, '
         .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
      summary.duration, summary.requests, sent_total, ok_total, other_total, wrapped_total,
      accepted_total, duplicate_total, ignored_total, codes,
      e.connect, e.read, e.write, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
