"""bench/stream's listeners, in a process of their own: N concurrent ``GET /v1/stream`` connections over plain
asyncio sockets (no HTTP client library: at 500 changes/s x 200 streams this process reads 100,000 events a
second, and must not be what bounds the figure). For every event each connection records the inbound event id
behind it and the wall-clock time its bytes arrived; the bench joins that with each event's receipt time in
the database.

    python bench/stream_clients.py HOST PORT KEY N OUT    (prints READY once every stream is open; runs until
                                                          SIGTERM, then writes OUT and exits)

OUT (JSON): per stream, the event ids and arrival times (unix seconds) in the order received, and the feed ids.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import time
from array import array

EVENT_ID = re.compile(rb'"event_id": (\d+)')
FEED_ID = re.compile(rb"(?:^|\n)id: (\d+)\n")


class Listener:
    def __init__(self) -> None:
        self.events = array("q")
        self.times = array("d")
        self.feed_ids = array("q")
        self.tail = b""
        self.opened = asyncio.Event()
        self.error: str | None = None

    def take(self, data: bytes, now: float) -> None:
        text = self.tail + data
        cut = text.rfind(b"\n\n")
        if cut < 0:
            self.tail = text
            return
        whole, self.tail = text[:cut + 2], text[cut + 2:]
        found = EVENT_ID.findall(whole)
        self.events.extend(int(n) for n in found)
        self.times.extend([now] * len(found))
        self.feed_ids.extend(int(n) for n in FEED_ID.findall(whole))


async def listen(host: str, port: int, key: str, listener: Listener) -> None:
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"GET /v1/stream HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
                     "Accept: text/event-stream\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
        listener.opened.set()
        while True:
            data = await reader.read(262_144)
            if not data:
                raise RuntimeError("the server closed the stream")
            listener.take(data, time.time())  # chunk-size lines never fall inside an event: one chunk per write
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        listener.error = f"{type(exc).__name__}: {exc}"
        listener.opened.set()


async def main(host: str, port: int, key: str, count: int, out: str) -> None:
    listeners = [Listener() for _ in range(count)]
    tasks = [asyncio.create_task(listen(host, port, key, each)) for each in listeners]
    await asyncio.gather(*(each.opened.wait() for each in listeners))
    print("READY", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    with open(out, "w") as handle:
        json.dump([{"events": each.events.tolist(), "times": each.times.tolist(), "feed_ids": each.feed_ids.tolist(),
                    "error": each.error} for each in listeners], handle)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]))
