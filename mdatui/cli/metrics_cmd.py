"""`mdatui metrics --listen HOST:PORT`: the accelerator's Prometheus endpoint (core.metrics), and
the same endpoint beside `mdatui serve --metrics HOST:PORT`. prometheus_client is imported only
when an endpoint is asked for: the other commands start without it."""

from __future__ import annotations

import signal

from .errors import CliError

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def listen_arg(text: str) -> str:
    """argparse type: HOST:PORT checked, kept as text."""
    import argparse

    from ..core import metrics
    try:
        metrics.parse_listen(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def start(listen_at: str, pin_dir: str):
    """The endpoint in a daemon thread; says where it listens on stdout."""
    from ..core import metrics
    try:
        server = metrics.listen(listen_at, pin_dir)
    except OSError as e:
        raise CliError(f"mdatui: cannot listen on {listen_at}: {e.strerror or e}: "
                       "choose another address or port") from None
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"mdatui metrics: http://{shown}:{port}/metrics ({pin_dir})", flush=True)
    return server


def cmd_metrics(a) -> int:
    from ..core.kernel import system
    system.require_root("metrics")
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        server = start(a.listen, a.pin_dir)
        signal.sigwait(_STOP_SIGNALS)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    server.shutdown()
    return 0


def add_parser(sub, pin_arg) -> None:
    p = sub.add_parser("metrics", help="serve Prometheus metrics of the accelerator at /metrics")
    p.add_argument("--listen", required=True, type=listen_arg, metavar="HOST:PORT",
                   help="address to serve on, e.g. 127.0.0.1:9477 or [::]:9477 (port 0: any free one)")
    pin_arg(p)
    p.set_defaults(func=cmd_metrics)
