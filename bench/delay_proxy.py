"""bench/delay_proxy.py: a TCP proxy that holds every chunk for a fixed delay, to put a network between a benchmark
and a local PostgreSQL (this machine's loopback has no ``netem``).

    python bench/delay_proxy.py --listen 15432 --to 127.0.0.1:5432 --delay-ms 0.25 &
    bench/ingest --backend postgres --postgres-url postgresql://postgres@127.0.0.1:15432/postgres

Each direction of each connection has a reader thread, which stamps what it reads with the time it is due, and a
sender thread, which sends it then (``time.sleep`` sleeps to the microsecond; asyncio's timers round to the
millisecond). A round trip through it therefore takes twice ``--delay-ms`` more than the same round trip
without it (plus the proxy's own hop, about 0.1 ms on a 2-core machine): 0.25 stands for a
database in the same cloud zone (0.5 ms), 1 for one in the next zone. It runs in its own process, so the
benchmark's CPU figures do not include it.
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import socket
import threading
import time


def _pump(source: socket.socket, target: socket.socket, delay: float) -> None:
    due: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

    def send() -> None:
        while True:
            at, chunk = due.get()
            if not chunk:
                break
            wait = at - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            try:
                target.sendall(chunk)
            except OSError:
                break
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    threading.Thread(target=send, daemon=True).start()
    while True:
        try:
            chunk = source.recv(65536)
        except OSError:
            chunk = b""
        due.put((time.perf_counter() + delay, chunk))
        if not chunk:
            return


def _serve(client: socket.socket, host: str, port: int, delay: float) -> None:
    try:
        upstream = socket.create_connection((host, port))
    except OSError:
        client.close()
        return
    for sock in (client, upstream):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    threading.Thread(target=_pump, args=(client, upstream, delay), daemon=True).start()
    threading.Thread(target=_pump, args=(upstream, client, delay), daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/delay_proxy.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", type=int, default=15432, help="port on 127.0.0.1 (default 15432)")
    parser.add_argument("--to", default="127.0.0.1:5432", help="host:port to forward to (default 127.0.0.1:5432)")
    parser.add_argument("--delay-ms", type=float, default=0.25, help="added delay each way, ms (default 0.25)")
    args = parser.parse_args(argv)
    host, _, port = args.to.rpartition(":")
    server = socket.create_server(("127.0.0.1", args.listen))
    print(f"delay_proxy: 127.0.0.1:{args.listen} -> {args.to}, {args.delay_ms} ms each way", flush=True)
    while True:
        client, _ = server.accept()
        _serve(client, host, int(port), args.delay_ms / 1000)


if __name__ == "__main__":
    raise SystemExit(main())
