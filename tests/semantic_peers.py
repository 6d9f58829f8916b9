"""Plain socket programs for tests/test_semantics.py, run inside a lab:

    python -m tests.semantic_peers echo   --port 7000 [--host 127.0.0.1]
    python -m tests.semantic_peers proxy  --port 15001 --to 127.0.0.1:7000
    python -m tests.semantic_peers duplex --to 198.18.0.2:80 --conns 4 --seconds 3 [--stagger 0]
    python -m tests.semantic_peers case NAME --port 7000

They are written the plainest way on purpose: blocking sockets, one thread per direction,
recv() straight away (no select or poll before it), sendall(), shutdown(SHUT_WR) at the end.
That is how most applications are written, and they must behave the same whether the
accelerator runs or not.

Every program reports on stdout as JSON lines. Every loop is bounded by a count or a time, and
each program has a watchdog that reports what it was doing (the step, per thread) and exits if
it is stuck: a hang is a result, not a stuck test.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import hashlib
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import tempfile
import termios
import threading
import time

# ------------------------------------------------------------------ common

_print_lock = threading.Lock()


def say(**fields) -> None:
    line = json.dumps(fields)
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def errname(e: BaseException) -> str:
    """BlockingIOError [EAGAIN] -> "EAGAIN"; anything else by its errno name or type."""
    if isinstance(e, OSError) and e.errno:
        return errno.errorcode.get(e.errno, str(e.errno))
    return type(e).__name__


def show(value):
    """What a user sees of a call's return value, in a form two runs can compare."""
    if isinstance(value, (bytes, bytearray)):
        if not value:
            return "EOF"
        return f"{len(value)} B sha256:{hashlib.sha256(value).hexdigest()[:16]}"
    return value


def call(fn, *args):
    try:
        return show(fn(*args))
    except OSError as e:
        return "error " + errname(e)


def data(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


class Stream:
    """Byte i of connection k's stream is block_k[i % PERIOD]: any byte can be checked where it
    lands, so a loss, duplicate or reordering shows as the first offset that is wrong."""

    PERIOD = 1_048_573  # a prime: write sizes never line up with it

    def __init__(self, conn: int):
        block = random.Random(1000 + conn).randbytes(self.PERIOD)
        self.ext = block + block[: 1 << 17]

    def piece(self, at: int, n: int) -> bytes:
        assert n <= 1 << 17
        i = at % self.PERIOD
        return self.ext[i:i + n]


class Checker:
    def __init__(self, stream: Stream):
        self.stream, self.at, self.bad = stream, 0, None

    def feed(self, got: bytes) -> None:
        for off in range(0, len(got), 1 << 17):
            part = got[off:off + (1 << 17)]
            if self.bad is None:
                want = self.stream.piece(self.at, len(part))
                if part != want:
                    i = next(j for j in range(len(part)) if part[j] != want[j])
                    self.bad = self.at + i
            self.at += len(part)


# Per-thread "what am I doing now", for hang reports.
STATE: dict[str, str] = {}


def doing(what: str) -> None:
    STATE[threading.current_thread().name] = what


def watchdog(seconds: float, report) -> None:
    """After `seconds`, report what every thread was doing and end the process."""
    def run() -> None:
        time.sleep(seconds)
        try:
            report()
        finally:
            os._exit(3)
    threading.Thread(target=run, name="watchdog", daemon=True).start()


def dump_threads_on_sigusr1() -> None:
    signal.signal(signal.SIGUSR1, lambda *_: say(event="threads", threads=dict(STATE)))


# ------------------------------------------------------------------ servers

def _listen(host: str, port: int) -> socket.socket:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(128)
    say(event="ready")
    return srv


def echo_server(host: str, port: int) -> None:
    """recv, sendall, until end-of-file; then close. One thread per connection."""
    dump_threads_on_sigusr1()
    srv = _listen(host, port)
    serial = 0

    def handle(conn: socket.socket, n: int) -> None:
        name, moved = threading.current_thread().name, 0
        try:
            with conn:
                while True:
                    doing(f"recv ({moved} B echoed)")
                    got = conn.recv(65536)
                    if not got:
                        break
                    doing(f"sendall {len(got)} B ({moved} B echoed)")
                    conn.sendall(got)
                    moved += len(got)
            doing(f"done ({moved} B echoed)")
            say(event="done", thread=name, bytes=moved)
        except Exception as e:
            doing(f"failed {errname(e)} ({moved} B echoed)")
            say(event="error", thread=name, error=errname(e), at=moved)

    while True:
        conn, _ = srv.accept()
        serial += 1
        threading.Thread(target=handle, args=(conn, serial), name=f"echo{serial}",
                         daemon=True).start()


def proxy_server(host: str, port: int, upstream: tuple[str, int]) -> None:
    """The plainest sidecar: one blocking thread per direction, recv -> sendall, and
    shutdown(SHUT_WR) of the other side when its source reaches end-of-file."""
    dump_threads_on_sigusr1()
    srv = _listen(host, port)
    serial = 0

    def pipe(src: socket.socket, dst: socket.socket, name: str, totals: dict) -> None:
        moved = 0
        try:
            while True:
                doing(f"recv ({moved} B moved)")
                got = src.recv(65536)
                if not got:
                    break
                doing(f"sendall {len(got)} B ({moved} B moved)")
                dst.sendall(got)
                moved += len(got)
            doing(f"shutdown(SHUT_WR) ({moved} B moved)")
            dst.shutdown(socket.SHUT_WR)
            doing(f"done ({moved} B moved)")
        except Exception as e:
            doing(f"failed {errname(e)} ({moved} B moved)")
            say(event="error", thread=name, error=errname(e), at=moved)
        totals[name] = moved

    def handle(conn: socket.socket, n: int) -> None:
        totals: dict[str, int] = {}
        try:
            up = socket.create_connection(upstream)
        except Exception as e:
            say(event="error", thread=f"proxy{n}-connect", error=errname(e), at=0)
            conn.close()
            return
        back = threading.Thread(target=pipe, args=(up, conn, f"proxy{n}-down", totals),
                                name=f"proxy{n}-down", daemon=True)
        back.start()
        threading.current_thread().name = f"proxy{n}-up"
        pipe(conn, up, f"proxy{n}-up", totals)
        back.join()
        conn.close()
        up.close()
        say(event="done", thread=f"proxy{n}", bytes=totals)

    while True:
        conn, _ = srv.accept()
        serial += 1
        threading.Thread(target=handle, args=(conn, serial), name=f"proxy{serial}-up",
                         daemon=True).start()


# ------------------------------------------------------------------ the full-duplex client

def duplex(to: tuple[str, int], conns: int, seconds: float, stagger: float,
           timeout: float, rate: float) -> None:
    """conns connections (conn k starts at k*stagger), each with a writer thread that writes its
    stream in sizes of 1-200 B and 1-64 KiB for `seconds` then shuts down its sending side, and
    a reader thread that checks every echoed byte at its position until end-of-file. Each
    writer keeps under `rate` bytes/s (0: no limit), so that two shared CPUs keep up."""
    results = [dict(conn=k, connected=False, sent=0, received=0, first_bad=None, eof=False,
                    errors=[]) for k in range(conns)]
    threads: list[threading.Thread] = []
    lock = threading.Lock()

    def failed(k: int, where: str, e: BaseException, at: int) -> None:
        with lock:
            results[k]["errors"].append(f"{where}: {errname(e)} at {at}")

    def reader(k: int, s: socket.socket, stream: Stream) -> None:
        check, r = Checker(stream), results[k]
        try:
            while True:
                doing(f"recv at offset {check.at}")
                got = s.recv(65536)
                if not got:
                    r["eof"] = True
                    doing(f"done: end-of-file at offset {check.at}")
                    break
                check.feed(got)
                r["received"], r["first_bad"] = check.at, check.bad
        except Exception as e:
            doing(f"failed {errname(e)} at offset {check.at}")
            failed(k, "reader recv", e, check.at)

    def writer(k: int) -> None:
        time.sleep(k * stagger)
        r, stream, rng = results[k], Stream(k), random.Random(k)
        try:
            doing("connect")
            s = socket.create_connection(to)
        except Exception as e:
            failed(k, "connect", e, 0)
            return
        r["connected"] = True
        rd = threading.Thread(target=reader, args=(k, s, stream), name=f"conn{k}-reader",
                              daemon=True)
        rd.start()
        threads.append(rd)
        began = time.monotonic()
        sent, end = 0, began + seconds
        try:
            while time.monotonic() < end:
                ahead = sent / rate - (time.monotonic() - began) if rate else 0
                if ahead > 0:
                    doing(f"pacing at offset {sent}")
                    time.sleep(max(0.0, min(ahead, end - time.monotonic())))
                    continue
                n = rng.randint(1, 200) if rng.random() < 0.5 else rng.randint(1, 65536)
                doing(f"sendall {n} B at offset {sent}")
                s.sendall(stream.piece(sent, n))
                sent += n
                r["sent"] = sent
            doing(f"shutdown(SHUT_WR) at offset {sent}")
            s.shutdown(socket.SHUT_WR)
            doing(f"done: sent {sent} B")
        except Exception as e:
            doing(f"failed {errname(e)} at offset {sent}")
            failed(k, "writer sendall", e, sent)
        rd.join()
        s.close()

    def report(hung: list[str]) -> None:
        say(conns=results, hangs=hung, intact=sum(
            1 for r in results
            if r["connected"] and r["eof"] and r["first_bad"] is None and not r["errors"]
            and r["received"] == r["sent"]))

    def on_hang() -> None:
        report([f"{t.name}: {STATE.get(t.name, '?')}" for t in threads if t.is_alive()])

    watchdog(timeout, on_hang)
    for k in range(conns):
        t = threading.Thread(target=writer, args=(k,), name=f"conn{k}-writer", daemon=True)
        t.start()
        threads.append(t)
    for t in list(threads):
        t.join()
    for t in list(threads):
        t.join()
    report([])
    sys.stdout.flush()
    os._exit(0)


# ------------------------------------------------------------------ one-process cases

R: dict = {}      # what the user sees: compared field by field, plain against accelerated
INFO: dict = {}   # timing-dependent details: printed, not compared
STEP = ["start"]


def step(what: str) -> None:
    STEP[0] = what


class Pairs:
    """Connected pairs over loopback: c connected, s accepted. Both blocking."""

    def __init__(self, port: int):
        self.lst = socket.socket()
        self.lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lst.bind(("127.0.0.1", port))
        self.lst.listen(16)
        self.port = port

    def new(self) -> tuple[socket.socket, socket.socket]:
        c = socket.create_connection(("127.0.0.1", self.port))
        s, _ = self.lst.accept()
        return c, s


def in_thread(fn, *args, name: str = "helper") -> tuple[threading.Thread, dict]:
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = show(fn(*args))
        except OSError as e:
            box["value"] = "error " + errname(e)
    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    return t, box


def joined(t: threading.Thread, box: dict, seconds: float = 5.0):
    t.join(seconds)
    if t.is_alive():
        return f"still blocked after {seconds:g} s"
    return box["value"]


def read_until_eof(s: socket.socket, limit: int = 64 << 20) -> tuple[bytes, str]:
    buf = bytearray()
    while len(buf) < limit:
        try:
            got = s.recv(65536)
        except OSError as e:
            return bytes(buf), "error " + errname(e)
        if not got:
            return bytes(buf), "EOF"
        buf += got
    return bytes(buf), f"no EOF after {limit} B"


def inq(s: socket.socket) -> int:
    return struct.unpack("i", fcntl.ioctl(s.fileno(), termios.FIONREAD, b"\0" * 4))[0]


def outq(s: socket.socket) -> int:
    return struct.unpack("i", fcntl.ioctl(s.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]


def pause(what: str) -> None:
    """Let the test act (on the accelerated run: change the rules) before going on."""
    step(f"paused: {what}")
    say(pause=what)
    sys.stdin.readline()


def case_half_close(p: Pairs) -> None:
    c, s = p.new()
    a, b = data(1, 70_000), data(2, 90_000)
    step("client sendall, then shutdown(SHUT_WR)")
    c.sendall(a)
    c.shutdown(socket.SHUT_WR)
    step("server reads until end-of-file")
    got, end = read_until_eof(s)
    R["server_got"], R["server_got_all"], R["server_end"] = show(got), got == a, end
    step("server sends after the client's FIN")
    R["server_send_after_fin"] = call(s.sendall, b)
    R["server_recv_after_eof"] = call(s.recv, 100)
    step("client reads the reply after its own shutdown")
    R["client_recv_part"] = call(c.recv, 1000)
    t, box = in_thread(_read_until_eof_shown, c, name="client-reader")
    time.sleep(0.3)
    step("server shutdown(SHUT_WR)")
    s.shutdown(socket.SHUT_WR)
    R["client_rest"] = joined(t, box)
    R["client_send_after_own_shutdown"] = call(c.send, b"x")
    c.close()
    s.close()


def case_unread_when_closed(p: Pairs) -> None:
    # The end that shut its sending side down first goes through TIME_WAIT to CLOSE the moment
    # its peer's FIN comes, while what the peer sent before may still wait to be read. Sent
    # before the shutdown, so that it is redirected: an end with nothing unread leaves the
    # sockhash at its own shutdown (bpf/sock_ops.c, mda_own_fin).
    c, s = p.new()
    body = data(110, 60_000)  # within the receive window: plain TCP sends it all unread
    step("server sends 60000 B, the client reading nothing yet; client shutdown(SHUT_WR)")
    s.sendall(body)
    c.shutdown(socket.SHUT_WR)
    step("server reads its end-of-file and shuts down")
    R["server_end"] = call(s.recv, 100)
    s.shutdown(socket.SHUT_WR)
    time.sleep(0.3)
    step("client reads what waits, its socket closed by now")
    got, end = read_until_eof(c)
    R["client_got"], R["client_got_all"], R["client_end"] = show(got), got == body, end
    c.close()
    s.close()


def case_shutdown_then_read(p: Pairs) -> None:
    # A blocking client sends its request, shuts its sending side down and reads the reply to
    # its end, from a server that waits in select() before reading (as an event-driven one
    # does) and answers 20 ms later. The FIN's acknowledgement, at the next timer tick, woke
    # the client's blocked read with EAGAIN in 8 of 8 connections before mda_own_fin. Three
    # round trips first: with under 6 messages a connection, a destination's connections are
    # judged short from the ninth and left to the stack.
    ends: dict[str, int] = {}
    for i in range(16):
        c, s = p.new()
        for _ in range(3):
            c.sendall(b"ping")
            s.recv(100)
            s.sendall(b"pong")
            c.recv(100)
        reply = data(120 + i, 5000)

        def answer(s=s, reply=reply):
            while True:
                select.select([s], [], [])
                if not s.recv(65536):
                    break
            time.sleep(0.02)
            s.sendall(reply)
            s.shutdown(socket.SHUT_WR)
        t, box = in_thread(answer, name="server")
        c.sendall(data(130 + i, 100))
        c.shutdown(socket.SHUT_WR)
        got, end = read_until_eof(c)
        what = f"{'intact' if got == reply else f'{len(got)} B'} {end}"
        ends[what] = ends.get(what, 0) + 1
        joined(t, box)
        c.close()
        s.close()
    R["replies"] = ends


def _read_until_eof_shown(s):
    got, end = read_until_eof(s)
    return [show(got), end]


def case_rst(p: Pairs) -> None:
    # A: the peer closes with unread data; then we read and write.
    c, s = p.new()
    s.sendall(data(3, 5000))
    time.sleep(0.2)
    step("client close() with 5000 B unread")
    c.close()
    time.sleep(0.2)
    R["recv_after_peer_closed_unread"] = call(s.recv, 100)
    R["recv_again"] = call(s.recv, 100)
    R["send_after_reset"] = call(s.send, b"y")
    s.close()
    # B: a reader blocked in recv() when the reset comes.
    c, s = p.new()
    s.sendall(data(4, 5000))
    time.sleep(0.2)
    step("server blocked in recv(), client close() with unread data")
    t, box = in_thread(s.recv, 100, name="blocked-reader")
    time.sleep(0.3)
    c.close()
    R["blocked_recv_when_peer_closed_unread"] = joined(t, box)
    s.close()
    # C: SO_LINGER 0: close() resets even with nothing unread.
    c, s = p.new()
    c.sendall(data(5, 3000))
    R["linger_peer_read"] = call(s.recv, 65536)
    step("client close() with SO_LINGER 0")
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    time.sleep(0.2)
    R["recv_after_linger0_close"] = call(s.recv, 100)
    s.close()
    # D: unread data sent the other way round (connecting side reads nothing, accepting closes).
    c, s = p.new()
    c.sendall(data(6, 20_000))
    time.sleep(0.2)
    step("server close() with 20000 B unread")
    s.close()
    time.sleep(0.2)
    R["client_recv_after_server_closed_unread"] = call(c.recv, 100)
    c.close()


def case_rcvtimeo(p: Pairs) -> None:
    c, s = p.new()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 500_000))

    def timed(fn, *args):
        t0 = time.monotonic()
        v = call(fn, *args)
        return v, time.monotonic() - t0

    step("recv with nothing to read")
    R["idle_recv"], dt = timed(c.recv, 100)
    INFO["idle_recv_s"] = round(dt, 3)
    R["idle_recv_returned_after_timeout"] = 0.45 <= dt <= 1.5
    s.sendall(data(7, 3000))
    time.sleep(0.1)
    R["recv_ready_data"] = call(c.recv, 65536)
    step("recv, data arrives during the wait")
    timer = threading.Timer(0.2, s.sendall, [data(8, 2000)])
    timer.start()
    R["recv_data_during_wait"], dt = timed(c.recv, 65536)
    INFO["recv_data_during_wait_s"] = round(dt, 3)
    R["woken_by_data_before_timeout"] = dt < 0.45
    step("recv with nothing to read, after traffic")
    R["idle_recv_after_traffic"], dt = timed(c.recv, 100)
    INFO["idle_recv_after_traffic_s"] = round(dt, 3)
    R["idle_recv_after_traffic_returned_after_timeout"] = 0.45 <= dt <= 1.5
    step("recv while this end sends (write space wakes the waiter)")
    t, box = in_thread(c.sendall, data(9, 2_000_000), name="writer")
    R["idle_recv_while_sending"], dt = timed(c.recv, 100)
    INFO["idle_recv_while_sending_s"] = round(dt, 3)
    R["idle_recv_while_sending_returned_after_timeout"] = 0.45 <= dt <= 1.5
    got = b""
    deadline = time.monotonic() + 5
    while len(got) < 2_000_000 and time.monotonic() < deadline:
        more = s.recv(65536)
        if not more:
            break
        got += more
    R["peer_got_what_was_sent_meanwhile"] = got == data(9, 2_000_000)
    R["writer_done"] = joined(t, box)
    step("recv, peer's FIN arrives during the wait")
    timer = threading.Timer(0.2, s.shutdown, [socket.SHUT_WR])
    timer.start()
    R["recv_fin_during_wait"], dt = timed(c.recv, 100)
    INFO["recv_fin_during_wait_s"] = round(dt, 3)
    R["woken_by_fin_before_timeout"] = dt < 0.45
    c.close()
    s.close()


def case_peek(p: Pairs) -> None:
    c, s = p.new()
    s.sendall(data(10, 5000))
    time.sleep(0.2)
    R["peek"] = call(c.recv, 65536, socket.MSG_PEEK)
    R["peek_again"] = call(c.recv, 65536, socket.MSG_PEEK)
    R["recv"] = call(c.recv, 65536)
    R["recv_is_what_was_peeked"] = R["recv"] == R["peek"]
    s.sendall(data(11, 1000))
    time.sleep(0.2)
    R["peek_10"] = call(c.recv, 10, socket.MSG_PEEK)
    R["recv_10"] = call(c.recv, 10)
    R["recv_rest"] = call(c.recv, 65536)
    for i in range(3):
        s.sendall(data(12 + i, 1000))
        time.sleep(0.05)
    time.sleep(0.2)
    R["peek_three_sends"] = call(c.recv, 65536, socket.MSG_PEEK)
    R["recv_three_sends"] = call(c.recv, 65536)
    step("blocking MSG_PEEK waits for data")
    timer = threading.Timer(0.2, s.sendall, [data(15, 700)])
    timer.start()
    R["blocking_peek"] = call(c.recv, 65536, socket.MSG_PEEK)
    R["recv_after_blocking_peek"] = call(c.recv, 65536)
    s.shutdown(socket.SHUT_WR)
    time.sleep(0.2)
    R["peek_at_eof"] = call(c.recv, 100, socket.MSG_PEEK)
    R["recv_at_eof"] = call(c.recv, 100)
    c.close()
    s.close()


def case_waitall(p: Pairs) -> None:
    c, s = p.new()
    pieces = [data(20 + i, 3000) for i in range(10)]

    def sender(ps, pause_s):
        for piece in ps:
            s.sendall(piece)
            time.sleep(pause_s)
    threading.Thread(target=sender, args=(pieces, 0.02), daemon=True).start()
    step("recv(30000, MSG_WAITALL) across 10 sends")
    got = c.recv(30000, socket.MSG_WAITALL)
    R["waitall_30000"], R["waitall_is_all_sent"] = show(got), got == b"".join(pieces)
    big = [data(40 + i, 65536) for i in range(16)]
    threading.Thread(target=sender, args=(big, 0.005), daemon=True).start()
    step("recv(1 MiB, MSG_WAITALL) across 16 sends of 64 KiB")
    got = c.recv(1 << 20, socket.MSG_WAITALL)
    R["waitall_1MiB"], R["waitall_1MiB_is_all_sent"] = show(got), got == b"".join(big)
    step("recv(5000, MSG_WAITALL), 1000 B then FIN")
    s.sendall(data(60, 1000))
    threading.Timer(0.2, s.shutdown, [socket.SHUT_WR]).start()
    R["waitall_cut_short_by_eof"] = call(c.recv, 5000, socket.MSG_WAITALL)
    R["recv_after"] = call(c.recv, 100)
    c.close()
    s.close()


def case_fionread(p: Pairs) -> None:
    c, s = p.new()
    R["inq_idle"], R["outq_idle"] = inq(c), outq(s)
    s.sendall(data(70, 12345))
    time.sleep(0.2)
    R["inq_after_12345_B"] = inq(c)
    R["sender_outq_after_delivery"] = outq(s)
    R["recv_345"] = call(c.recv, 345)
    R["inq_after_reading_345"] = inq(c)
    got, deadline = 345, time.monotonic() + 5
    while got < 12345 and time.monotonic() < deadline:
        got += len(c.recv(65536))
    R["inq_after_draining"] = inq(c)
    for i in range(3):
        s.sendall(data(71 + i, 1000))
        time.sleep(0.05)
    time.sleep(0.2)
    R["inq_after_3_sends_of_1000_B"] = inq(c)
    R["recv_them"] = call(c.recv, 65536)
    c.sendall(data(75, 20_000))
    time.sleep(0.2)
    R["outq_20000_B_unread_by_peer"] = outq(c)
    R["peer_inq_20000_B_unread"] = inq(s)
    s.shutdown(socket.SHUT_WR)
    time.sleep(0.2)
    R["inq_at_eof"] = inq(c)
    R["recv_at_eof"] = call(c.recv, 100)
    c.close()
    s.close()


EPOLL_NAMES = {select.EPOLLIN: "IN", select.EPOLLOUT: "OUT", select.EPOLLRDHUP: "RDHUP",
               select.EPOLLHUP: "HUP", select.EPOLLERR: "ERR", select.EPOLLPRI: "PRI"}


POLL_NAMES = {select.POLLIN: "IN", select.POLLOUT: "OUT", select.POLLRDHUP: "RDHUP",
              select.POLLHUP: "HUP", select.POLLERR: "ERR", select.POLLPRI: "PRI"}


def case_epoll_et(p: Pairs) -> None:
    c, s = p.new()
    c.setblocking(False)
    ep = select.epoll()
    ep.register(c.fileno(), select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET)

    def wait(t: float) -> list[str]:
        return ["|".join(n for bit, n in EPOLL_NAMES.items() if mask & bit) for _, mask in ep.poll(t)]

    def drain() -> list:
        total = 0
        for _ in range(100_000):
            try:
                got = c.recv(65536)
            except BlockingIOError:
                return [total, "EAGAIN"]
            except OSError as e:
                return [total, "error " + errname(e)]
            if not got:
                return [total, "EOF"]
            total += len(got)
        return [total, "still reading"]

    R["idle"] = wait(0.2)
    s.sendall(data(80, 1000))
    R["after_send"] = wait(1.0)
    R["again_without_reading"] = wait(0.2)
    R["drain"] = drain()
    R["after_drain"] = wait(0.2)
    for i in range(3):
        s.sendall(data(81 + i, 500))
        R[f"arrival_{i}"] = wait(1.0)
        R[f"drain_{i}"] = drain()
    s.sendall(data(85, 500))
    R["arrival_a_not_drained"] = wait(1.0)
    s.sendall(data(86, 500))
    R["arrival_b_not_drained"] = wait(1.0)
    R["drain_both"] = drain()
    step("a sender thread, read on each edge")
    big = data(87, 1_000_000)
    t, box = in_thread(s.sendall, big, name="sender")
    got, deadline = 0, time.monotonic() + 10
    while got < len(big) and time.monotonic() < deadline:
        if wait(1.0):
            n, _ = drain()
            got += n
    R["edge_triggered_reader_got_all"] = got
    R["sender"] = joined(t, box)
    step("poll(), level-triggered")
    pl = select.poll()
    pl.register(c.fileno(), select.POLLIN | select.POLLRDHUP)

    def polled(ms: int) -> list[str]:
        return ["|".join(n for bit, n in POLL_NAMES.items() if mask & bit) for _, mask in pl.poll(ms)]
    R["poll_idle"] = polled(200)
    s.sendall(data(88, 100))
    R["poll_after_send"] = polled(1000)
    R["poll_again_without_reading"] = polled(200)
    R["poll_drain"] = drain()
    R["poll_after_drain"] = polled(200)
    s.shutdown(socket.SHUT_WR)
    R["poll_fin"] = polled(1000)
    R["fin"] = wait(1.0)
    R["drain_fin"] = drain()
    R["after_eof"] = wait(0.2)
    ep.close()
    c.close()
    s.close()


def case_sendfile_splice(p: Pairs) -> None:
    tmp = tempfile.mkdtemp(prefix="mdatui-sem-")
    try:
        src = os.path.join(tmp, "src")
        body = data(90, 3_000_000 + 12345)
        with open(src, "wb") as f:
            f.write(body)
        # A: sendfile from a file, read with recv.
        c, s = p.new()
        t, box = in_thread(_read_until_eof_shown, c, name="recv-reader")
        step("os.sendfile into the socket")
        sent = 0
        with open(src, "rb") as f:
            for _ in range(10_000):
                if sent >= len(body):
                    break
                n = os.sendfile(s.fileno(), f.fileno(), sent, len(body) - sent)
                if n == 0:
                    break
                sent += n
        s.shutdown(socket.SHUT_WR)
        R["sendfile_sent"] = sent
        R["recv_after_sendfile"] = joined(t, box, 10)
        R["expected"] = show(body)
        c.close()
        s.close()
        # B: send with sendall, receive with splice into a file.
        c, s = p.new()
        t, box = in_thread(c.sendall, body, name="sender")
        dst = os.path.join(tmp, "dst")
        r, w = os.pipe()
        step("os.splice from the socket into a pipe, then into a file")
        out = open(dst, "wb")

        def splice_all() -> list:
            moved = 0
            try:
                for _ in range(100_000):
                    if moved >= len(body):
                        return [moved, None]
                    n = os.splice(s.fileno(), w, 65536)
                    if n == 0:
                        return [moved, "EOF"]
                    left = n
                    while left:
                        left -= os.splice(r, out.fileno(), left)
                    moved += n
            except OSError as e:
                return [moved, "error " + errname(e)]
            return [moved, "still reading"]
        ts, boxs = in_thread(splice_all, name="splicer")
        R["splice_end"] = joined(ts, boxs, 8)
        R["sendall"] = joined(t, box, 10)
        if not ts.is_alive():
            out.close()
            with open(dst, "rb") as f:
                R["spliced_into_file"] = show(f.read())
            c.shutdown(socket.SHUT_WR)
            step("os.splice at end-of-file")
            R["splice_at_eof"] = call(os.splice, s.fileno(), w, 65536)
        c.close()
        s.close()
    finally:
        for name in os.listdir(tmp):
            os.unlink(os.path.join(tmp, name))
        os.rmdir(tmp)


def case_never_reads(p: Pairs) -> None:
    c, s = p.new()
    stream = Stream(7)
    c.setblocking(False)
    step("non-blocking writer, nobody reads")
    sent, end, t0, pause_at = 0, None, time.monotonic(), 1 << 20
    while sent < (1 << 30) and time.monotonic() - t0 < 5:
        try:
            sent += c.send(stream.piece(sent, 65536))
        except BlockingIOError:
            end = "EAGAIN"
            break
        except OSError as e:
            end = "error " + errname(e)
            break
        if sent >= pause_at:  # some 100 MB/s: a peer that stays behind, not a burst
            pause_at += 1 << 20
            time.sleep(0.01)
    R["nonblocking_writer_stops_with"] = end or f"no EAGAIN after {sent} B"
    INFO["sent_before_EAGAIN"] = sent
    R["writable_while_full"] = bool(select.select([], [c], [], 0.2)[1])
    c.setblocking(True)
    more = 1 << 20

    def blocking_writer() -> None:
        at = sent
        while at < sent + more:
            n = min(65536, sent + more - at)
            c.sendall(stream.piece(at, n))
            at += n
    t, box = in_thread(blocking_writer, name="blocking-writer")
    time.sleep(0.5)
    R["blocking_writer_blocked_while_full"] = t.is_alive()
    step("the reader reads everything")
    check, deadline = Checker(stream), time.monotonic() + 20
    while check.at < sent + more and time.monotonic() < deadline:
        got = s.recv(65536)
        if not got:
            break
        check.feed(got)
    R["reader_got_everything"] = check.at == sent + more
    R["first_bad_offset"] = check.bad
    R["blocking_writer_done"] = joined(t, box, 5)
    c.shutdown(socket.SHUT_WR)
    R["reader_at_eof"] = call(s.recv, 100)
    c.close()
    s.close()


def case_blocked_reader_fin(p: Pairs) -> None:
    def blocked_then(prepare, act, key):
        c, s = p.new()
        prepare(c, s)
        t, box = in_thread(c.recv, 65536, name="blocked-reader")
        time.sleep(0.3)
        step(f"{key}: reader blocked in recv()")
        act(c, s)
        R[key] = joined(t, box)
        c.close()
        s.close()

    nothing = lambda c, s: None  # noqa: E731

    def read_some(c, s):
        s.sendall(data(100, 1000))
        R["read_before_block"] = call(c.recv, 65536)

    blocked_then(nothing, lambda c, s: s.shutdown(socket.SHUT_WR), "peer_shutdown")
    blocked_then(read_some, lambda c, s: s.shutdown(socket.SHUT_WR), "peer_shutdown_after_data")
    blocked_then(nothing, lambda c, s: s.close(), "peer_close")
    # The reader's end shut down its sending side first (it is in FIN_WAIT2 when the peer's FIN
    # comes): whether a waiting recv() sees the FIN is a race, so it is tried many times.
    ends: dict[str, int] = {}
    for i in range(20):
        c, s = p.new()
        s.sendall(data(102, 1000))
        c.shutdown(socket.SHUT_WR)
        c.recv(65536)
        t, box = in_thread(c.recv, 65536, name="blocked-reader")
        time.sleep(0.05)
        step(f"own side shut down, reader blocked in recv(), peer shutdown ({i + 1} of 20)")
        s.shutdown(socket.SHUT_WR)
        v = joined(t, box)
        ends[v] = ends.get(v, 0) + 1
        c.close()
        s.close()
    R["after_own_shutdown_20_times"] = ends
    # The reader's own end sends meanwhile (write space may wake the waiting reader).
    c, s = p.new()
    t, box = in_thread(c.recv, 65536, name="blocked-reader")
    body = data(101, 4_000_000)
    tw, boxw = in_thread(c.sendall, body, name="writer")
    got, end = read_until_eof_until(s, len(body))
    R["peer_got_all_while_reader_blocked"] = got == body
    R["writer"] = joined(tw, boxw)
    R["reader_still_blocked_before_fin"] = t.is_alive()
    step("reader blocked while its end sent 4 MB; peer shutdown")
    s.shutdown(socket.SHUT_WR)
    R["peer_shutdown_while_sending"] = joined(t, box)
    c.close()
    s.close()


def read_until_eof_until(s: socket.socket, n: int) -> tuple[bytes, str]:
    buf, deadline = bytearray(), time.monotonic() + 10
    while len(buf) < n and time.monotonic() < deadline:
        got = s.recv(65536)
        if not got:
            return bytes(buf), "EOF"
        buf += got
    return bytes(buf), ""


def case_handback_order(p: Pairs) -> None:
    """Bytes redirected but unread when the connection leaves the fast path, then bytes over
    TCP: the reader must get them in the order they were sent, in both directions."""
    c, s = p.new()
    streams = {"c": Stream(11), "s": Stream(12)}
    at = {"c": 0, "s": 0}

    def write(side: str, sock: socket.socket, sizes: list[int]) -> None:
        for n in sizes:
            sock.sendall(streams[side].piece(at[side], n))
            at[side] += n

    mixed = [32768, 100, 7, 4000, 65536, 1, 200] * 3
    step("both sides write, nobody reads")
    write("c", c, mixed)
    write("s", s, mixed)
    pause("take the connection off the fast path")
    step("both sides write after the hand-back, nobody reads yet")
    write("c", c, mixed)
    write("s", s, mixed)
    # A stream of small writes (the accelerator's own hand-back for loopback streams).
    write("c", c, [50] * 100 + [65536] * 2)
    write("s", s, [50] * 100 + [65536] * 2)
    c.shutdown(socket.SHUT_WR)
    s.shutdown(socket.SHUT_WR)
    for side, reader in (("s", c), ("c", s)):
        check, end = Checker(streams[side]), None
        deadline = time.monotonic() + 10
        step(f"reading what {side} sent")
        while time.monotonic() < deadline:
            got = reader.recv(65536)
            if not got:
                end = "EOF"
                break
            check.feed(got)
        R[f"from_{side}_received_all"] = check.at == at[side]
        R[f"from_{side}_first_bad_offset"] = check.bad
        R[f"from_{side}_end"] = end
        INFO[f"from_{side}"] = [check.at, at[side]]
    c.close()
    s.close()
    # B: the accelerator's own hand-back of a loopback stream of small writes, while the reader
    # has not read: large writes (redirected), 100 small ones, large ones again, then all read.
    pause("restore the rules")
    c, s = p.new()
    stream, sent = Stream(13), 0
    step("B: large, small, large writes, nobody reads")
    for n in [65536] * 4 + [50] * 200 + [65536] * 4:
        c.sendall(stream.piece(sent, n))
        sent += n
    c.shutdown(socket.SHUT_WR)
    check, end, deadline = Checker(stream), None, time.monotonic() + 10
    step("B: reading")
    while time.monotonic() < deadline:
        got = s.recv(65536)
        if not got:
            end = "EOF"
            break
        check.feed(got)
    R["small_writes_received_all"] = check.at == sent
    R["small_writes_first_bad_offset"] = check.bad
    R["small_writes_end"] = end
    c.close()
    s.close()


CASES = {
    "half_close": case_half_close,
    "shutdown_then_read": case_shutdown_then_read,
    "unread_when_closed": case_unread_when_closed,
    "rst": case_rst,
    "rcvtimeo": case_rcvtimeo,
    "peek": case_peek,
    "waitall": case_waitall,
    "fionread": case_fionread,
    "epoll_et": case_epoll_et,
    "sendfile_splice": case_sendfile_splice,
    "never_reads": case_never_reads,
    "blocked_reader_fin": case_blocked_reader_fin,
    "handback_order": case_handback_order,
}


def run_case(name: str, port: int, timeout: float) -> None:
    watchdog(timeout, lambda: say(case=name, results=R, info=INFO,
                                  hang=f"{STEP[0]} (not done after {timeout:g} s)", crash=None))
    p = Pairs(port)
    try:
        CASES[name](p)
    except Exception as e:
        say(case=name, results=R, info=INFO, hang=None,
            crash=f"{type(e).__name__} [{errname(e)}] during: {STEP[0]}")
        sys.stdout.flush()
        os._exit(0)
    say(case=name, results=R, info=INFO, hang=None, crash=None)
    sys.stdout.flush()
    os._exit(0)


# ------------------------------------------------------------------ command line

def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.semantic_peers")
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("echo")
    e.add_argument("--port", type=int, required=True)
    e.add_argument("--host", default="0.0.0.0")
    x = sub.add_parser("proxy")
    x.add_argument("--port", type=int, required=True)
    x.add_argument("--host", default="0.0.0.0")
    x.add_argument("--to", type=_addr, required=True)
    d = sub.add_parser("duplex")
    d.add_argument("--to", type=_addr, required=True)
    d.add_argument("--conns", type=int, default=4)
    d.add_argument("--seconds", type=float, default=3)
    d.add_argument("--stagger", type=float, default=0)
    d.add_argument("--timeout", type=float, default=30, help="report hangs after this many s")
    d.add_argument("--rate", type=float, default=0, help="bytes/s per connection at most")
    c = sub.add_parser("case")
    c.add_argument("name", choices=sorted(CASES))
    c.add_argument("--port", type=int, default=7000)
    c.add_argument("--timeout", type=float, default=20)
    a = ap.parse_args(argv)
    if a.cmd == "echo":
        echo_server(a.host, a.port)
    elif a.cmd == "proxy":
        proxy_server(a.host, a.port, a.to)
    elif a.cmd == "duplex":
        duplex(a.to, a.conns, a.seconds, a.stagger, a.timeout, a.rate)
    else:
        run_case(a.name, a.port, a.timeout)


if __name__ == "__main__":
    main()
