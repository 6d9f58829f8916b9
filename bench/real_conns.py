"""Real idle loopback connections for `bench.console --real`: one side of a batch per process.

    python -m bench.real_conns serve   --addr 127.1.0.1 --ports 20000,20001 --count 8500
    python -m bench.real_conns connect --addr 127.1.0.1 --ports 20000,20001 --src 127.2.0.1 --count 8500

A server listens on its own loopback address (127.0.0.0/8 is all loopback) on a few ports,
prints LISTENING, accepts --count connections and prints READY <n>; a client binds its own source
address (IP_BIND_ADDRESS_NO_PORT: the port is picked per 4-tuple on connect, so one process pair
never runs out of ephemeral ports), connects --count times and prints READY <n>. Both then hold
their sockets, non-blocking, single-threaded in epoll: the first --chat client sockets send a
small message every second and the server echoes it (it reads every socket), the others stay
idle. Each process raises
its soft RLIMIT_NOFILE to the hard limit; a batch is kept under 9,000 sockets by the caller.
Everything is bounded: --seconds to get ready, then --hold seconds or until stdin closes (the
bench kills them by pid anyway).
"""

from __future__ import annotations

import argparse
import errno
import resource
import select
import socket
import sys
import time

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
BACKLOG = 4096
MSG = b"ping-0123456789abcdef\n"


def _raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and need > hard:
        raise SystemExit(f"{need} sockets need more than the hard RLIMIT_NOFILE {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _hold(ep: select.epoll, chat: dict[int, socket.socket], client: bool, hold: float) -> None:
    """Until stdin closes or hold seconds pass: echo (server) or send and read back (client)."""
    ep.register(sys.stdin.fileno(), select.EPOLLIN)
    for fd in chat:
        ep.register(fd, select.EPOLLIN)
    end = time.monotonic() + hold
    next_send = 0.0
    while time.monotonic() < end:
        if client and time.monotonic() >= next_send:
            next_send = time.monotonic() + 1.0
            for s in chat.values():
                try:
                    s.send(MSG)
                except (BlockingIOError, InterruptedError):
                    pass
        for fd, _ in ep.poll(1.0):
            if fd == sys.stdin.fileno():
                if not sys.stdin.buffer.read1(4096):
                    return
                continue
            s = chat[fd]
            try:
                data = s.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                ep.unregister(fd)
                del chat[fd]
            elif not client:
                try:
                    s.send(data)
                except (BlockingIOError, InterruptedError):
                    pass


def serve(addr: str, ports: list[int], count: int, seconds: float, hold: float) -> int:
    _raise_nofile(count + len(ports) + 32)
    ep = select.epoll()
    listeners = {}
    for port in ports:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((addr, port))
        ls.listen(BACKLOG)
        ls.setblocking(False)
        listeners[ls.fileno()] = ls
        ep.register(ls.fileno(), select.EPOLLIN)
    print("LISTENING", flush=True)
    held: list[socket.socket] = []
    deadline = time.monotonic() + seconds
    while len(held) < count and time.monotonic() < deadline:
        for fd, _ in ep.poll(0.5):
            ls = listeners[fd]
            while len(held) < count:
                try:
                    s, _ = ls.accept()
                except (BlockingIOError, InterruptedError):
                    break
                s.setblocking(False)
                held.append(s)
    print(f"READY {len(held)}", flush=True)
    for fd in listeners:
        ep.unregister(fd)
    # Every accepted socket is watched: which of them the client's --chat ones reach is the
    # order of accepts, and a socket nobody reads would keep its bytes (and disable's drain) forever.
    _hold(ep, {s.fileno(): s for s in held}, False, hold)
    return 0


def connect(addr: str, ports: list[int], src: str, count: int, chat: int, seconds: float,
            hold: float) -> int:
    _raise_nofile(count + 32)
    held: list[socket.socket] = []
    deadline = time.monotonic() + seconds
    failures = 0
    while len(held) < count and time.monotonic() < deadline and failures < 100:
        s = socket.socket()
        s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind((src, 0))
        s.settimeout(5)
        try:
            s.connect((addr, ports[len(held) % len(ports)]))
        except OSError as e:
            s.close()
            failures += 1
            print(f"connect: {errno.errorcode.get(e.errno, e)}", file=sys.stderr, flush=True)
            continue
        s.setblocking(False)
        held.append(s)
    print(f"READY {len(held)}", flush=True)
    _hold(select.epoll(), {s.fileno(): s for s in held[:chat]}, True, hold)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("role", choices=("serve", "connect"))
    ap.add_argument("--addr", required=True, help="the server's loopback address")
    ap.add_argument("--ports", required=True, help="comma-separated listening ports")
    ap.add_argument("--src", default="127.0.0.1", help="the client's source address")
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--chat", type=int, default=0, help="connections that carry a little traffic")
    ap.add_argument("--seconds", type=float, default=120, help="to open or accept them all")
    ap.add_argument("--hold", type=float, default=3600, help="seconds to hold them at most")
    a = ap.parse_args(argv)
    if not 0 < a.count <= 9000:
        ap.error("--count 1..9000 (sockets per process)")
    ports = [int(p) for p in a.ports.split(",")]
    if a.role == "serve":
        return serve(a.addr, ports, a.count, a.seconds, a.hold)
    return connect(a.addr, ports, a.src, a.count, a.chat, a.seconds, a.hold)


if __name__ == "__main__":
    sys.exit(main())
