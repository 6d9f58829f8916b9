"""Small TCP peers that make real traffic for the demo, the benchmarks and the tests.

    python -m mdatui.lab.traffic echo  --port 7000
    python -m mdatui.lab.traffic sink  --port 7000 [--delay 2] [--shut-first]
    python -m mdatui.lab.traffic proxy --port 15001 --to 127.0.0.1:7000
    python -m mdatui.lab.traffic push  --port 7000 --bytes 3000000
    python -m mdatui.lab.traffic recv  --from 127.0.0.1:7000 --bytes 3000000 [--hold]
    python -m mdatui.lab.traffic send  --to 127.0.0.1:7000 --bytes 50000000 [--echo] [--hold] [--nodelay]
    python -m mdatui.lab.traffic churn --to 127.0.0.1:7000 --count 10000 [--exchanges 4]
    python -m mdatui.lab.traffic chat  --to 198.18.0.2:80 --seconds 600 --rate 50
    python -m mdatui.lab.traffic msgs  --to 127.0.0.1:7000 --sizes 10,3000,1 [--hold]

Servers print READY once listening; every command reports on stdout as one JSON line.
Every loop is bounded by a count or a time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import select
import socket
import sys
import threading
import time

BLOCK = random.Random(1).randbytes(1 << 20)  # the same bytes on every run, so hashes compare


def _addr(text: str) -> tuple[str, int]:
    """host:port, or [v6]:port"""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _end(name: tuple) -> str:
    """A socket name as mdatui shows an end: an IPv4-mapped address dotted, IPv6 in brackets."""
    host, port = name[0], name[1]
    if host.startswith("::ffff:") and "." in host:
        host = host[len("::ffff:"):]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _recv(s: socket.socket, n: int) -> bytes:
    """Wait until readable, then read, as event-driven servers do.

    A thread blocked inside recv() on a sockmap socket when the peer's FIN arrives gets EAGAIN
    instead of end-of-file (tcp_bpf, seen on 6.18); after poll() says readable it gets 0.
    """
    select.select([s], [], [])
    return s.recv(n)


def _say(**fields) -> None:
    print(json.dumps(fields), flush=True)


def _listen(port: int, host: str = "0.0.0.0") -> socket.socket:
    """An IPv6 host (:: for any) listens dual-stack: IPv4 clients arrive IPv4-mapped."""
    srv = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    if srv.family == socket.AF_INET6:
        srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(1024)
    print("READY", flush=True)
    return srv


def _serve(srv: socket.socket, handle) -> None:
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := _recv(conn, 1 << 16):
            conn.sendall(data)


def _sink(conn: socket.socket, delay: float = 0.0, shut_first: bool = False) -> None:
    h, n, peer = hashlib.sha256(), 0, _end(conn.getpeername())  # closed by the time it is said
    if shut_first:  # a listener that never answers says so: its end closes at the sender's FIN
        conn.shutdown(socket.SHUT_WR)
    time.sleep(delay)  # a reader that falls behind: what was sent waits in its queue
    with conn:
        while data := _recv(conn, 1 << 16):
            h.update(data)
            n += len(data)
        _say(bytes=n, sha256=h.hexdigest(), peer=peer)


def _push(conn: socket.socket, total: int) -> None:
    """A server that speaks first, then waits for the client to hang up."""
    with conn:
        for piece in _payload(total, 1 << 16):
            conn.sendall(piece)
        while _recv(conn, 1 << 16):
            pass


def recv(peer: tuple[str, int], total: int, hold: bool) -> None:
    """A client that never sends: it reads what the server pushes."""
    s = socket.create_connection(peer)
    h, got = hashlib.sha256(), 0
    while got < total and (data := _recv(s, 1 << 16)):
        h.update(data)
        got += len(data)
    _say(local=_end(s.getsockname()), bytes=got, sha256=h.hexdigest())
    if hold:
        sys.stdin.readline()
    s.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := _recv(src, 1 << 16):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _proxy(upstream: tuple[str, int]):
    def handle(conn: socket.socket) -> None:
        with conn, socket.create_connection(upstream) as up:
            back = threading.Thread(target=_pipe, args=(up, conn), daemon=True)
            back.start()
            _pipe(conn, up)
            back.join()
    return handle


def _payload(total: int, chunk: int):
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        start = sent % len(BLOCK)
        piece = BLOCK[start:start + n]
        if len(piece) < n:
            piece += BLOCK[: n - len(piece)]
        yield piece
        sent += n


def _connect(to: tuple[str, int], source_port: int, nodelay: bool) -> socket.socket:
    """TCP_NODELAY is set before connect(), where the accelerator reads it."""
    s = socket.socket(socket.AF_INET6 if ":" in to[0] else socket.AF_INET)
    try:
        if nodelay:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if source_port:
            s.bind(("", source_port))
        s.connect(to)
    except BaseException:
        s.close()
        raise
    return s


def send(to: tuple[str, int], total: int, chunk: int, echo: bool, hold: bool, pause: float,
         source_port: int = 0, nodelay: bool = False) -> None:
    s = _connect(to, source_port, nodelay)
    local = _end(s.getsockname())
    if hold:  # let the caller look at the maps before any byte moves
        _say(local=local, state="connected")
        sys.stdin.readline()
    h_out, h_in, got = hashlib.sha256(), hashlib.sha256(), 0
    reader = None
    if echo:
        def read_back() -> None:
            nonlocal got
            while got < total and (data := _recv(s, 1 << 16)):
                h_in.update(data)
                got += len(data)
        reader = threading.Thread(target=read_back, daemon=True)
        reader.start()
    for piece in _payload(total, chunk):
        s.sendall(piece)
        h_out.update(piece)
        if pause:
            time.sleep(pause)
    if reader:
        reader.join()
    result = dict(local=local, sent=total, sha256_sent=h_out.hexdigest())
    if echo:
        result.update(received=got, sha256_received=h_in.hexdigest())
    if hold:
        _say(state="done", **result)
        sys.stdin.readline()
        s.close()
    else:
        s.shutdown(socket.SHUT_WR)
        _recv(s, 1)  # wait for the server's close so that its counts are final
        s.close()
        _say(**result)


def messages(sizes: list[int]) -> list[bytes]:
    """What `msgs` sends: consecutive slices of the BLOCK stream, so every byte can be checked."""
    stream = b"".join(_payload(sum(sizes), 1 << 16))
    out, at = [], 0
    for n in sizes:
        out.append(stream[at:at + n])
        at += n
    return out


def msgs(to: tuple[str, int], sizes: list[int], hold: bool) -> None:
    """One send() per size, each one message for sk_msg: counters and dumps can be checked."""
    s = socket.create_connection(to)
    local = _end(s.getsockname())
    if hold:
        _say(local=local, state="connected")
        sys.stdin.readline()
    for piece in messages(sizes):
        s.sendall(piece)
    result = dict(local=local, msgs=len(sizes), bytes=sum(sizes))
    if hold:
        _say(state="done", **result)
        sys.stdin.readline()
    s.shutdown(socket.SHUT_WR)
    _recv(s, 1)  # wait for the server's close so that its counts are final
    s.close()
    if not hold:
        _say(**result)


def churn(to: tuple[str, int], count: int, exchanges: int = 1) -> None:
    """count connections one after another, each sending exchanges messages to an echo server;
    echoed: the connections whose every reply came back whole."""
    ok = 0
    for i in range(count):
        with socket.create_connection(to) as s:
            replies = 0
            for j in range(exchanges):
                msg = b"ping %d.%d" % (i, j)
                s.sendall(msg)
                replies += _recv(s, 64) == msg
            ok += replies == exchanges
    _say(connections=count, echoed=ok)


def chat(to: tuple[str, int], seconds: float, rate: float, size: int) -> None:
    """Request/response at a steady rate: what the demo shows moving."""
    deadline = time.monotonic() + seconds
    done = 0
    with socket.create_connection(to) as s:
        while time.monotonic() < deadline:
            msg = (b"GET /%d HTTP/1.1\r\nHost: demo\r\n\r\n" % done).ljust(size, b".")
            s.sendall(msg)
            need = len(msg)
            while need and (data := _recv(s, need)):
                need -= len(data)
            done += 1
            time.sleep(1 / rate)
    _say(requests=done)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="mdatui.lab.traffic")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("echo", "sink", "proxy", "push"):
        p = sub.add_parser(name)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--host", default="0.0.0.0")
        if name == "proxy":
            p.add_argument("--to", type=_addr, required=True)
        if name == "sink":
            p.add_argument("--delay", type=float, default=0.0, help="seconds before reading")
            p.add_argument("--shut-first", action="store_true",
                           help="shut the sending side down before reading")
        if name == "push":
            p.add_argument("--bytes", type=int, default=1 << 20, help="sent to each client")
    p = sub.add_parser("send")
    p.add_argument("--to", type=_addr, required=True)
    p.add_argument("--bytes", type=int, default=1 << 20)
    p.add_argument("--chunk", type=int, default=1 << 16)
    p.add_argument("--echo", action="store_true")
    p.add_argument("--hold", action="store_true")
    p.add_argument("--pause", type=float, default=0.0, help="seconds between chunks")
    p.add_argument("--source-port", type=int, default=0)
    p.add_argument("--nodelay", action="store_true", help="TCP_NODELAY, set before connect()")
    p = sub.add_parser("msgs")
    p.add_argument("--to", type=_addr, required=True)
    p.add_argument("--sizes", type=lambda t: [int(n) for n in t.split(",")], required=True,
                   help="bytes of each message, comma-separated")
    p.add_argument("--hold", action="store_true")
    p = sub.add_parser("recv")
    p.add_argument("--from", dest="peer", type=_addr, required=True)
    p.add_argument("--bytes", type=int, default=1 << 20)
    p.add_argument("--hold", action="store_true")
    p = sub.add_parser("churn")
    p.add_argument("--to", type=_addr, required=True)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--exchanges", type=int, default=1, help="messages echoed per connection")
    p = sub.add_parser("chat")
    p.add_argument("--to", type=_addr, required=True)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--rate", type=float, default=20)
    p.add_argument("--size", type=int, default=256)
    a = ap.parse_args(argv)
    if a.cmd in ("echo", "sink", "proxy", "push"):
        handle = {"echo": _echo,
                  "sink": lambda c: _sink(c, a.delay, a.shut_first),
                  "push": lambda c: _push(c, a.bytes)}.get(a.cmd) or _proxy(a.to)
        _serve(_listen(a.port, a.host), handle)
    elif a.cmd == "send":
        send(a.to, a.bytes, a.chunk, a.echo, a.hold, a.pause, a.source_port, a.nodelay)
    elif a.cmd == "msgs":
        msgs(a.to, a.sizes, a.hold)
    elif a.cmd == "recv":
        recv(a.peer, a.bytes, a.hold)
    elif a.cmd == "churn":
        churn(a.to, a.count, a.exchanges)
    else:
        chat(a.to, a.seconds, a.rate, a.size)


if __name__ == "__main__":
    main()
