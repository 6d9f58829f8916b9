"""Turning the accelerator on and off: the kernel side (kernel.loader) with the drain service.

`enable` loads, attaches and pins, then starts `mdatui serve`; `disable` detaches, has every end
stop redirecting, takes the drained ones out of the sockhash and hands the rest to the service.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from . import drain, service
from .kernel import abi, loader, system
from .kernel.instance import DEFAULT_PIN_DIR, Instance

# How long `disable` takes ends out of the sockhash itself before it leaves the rest to the
# service.
DRAIN_SECONDS = 2.0


@dataclass
class EnableResult:
    instance: Instance
    already: bool  # True: it was running; nothing new was attached
    service: int | None  # pid of `mdatui serve` for it, None when not running


@dataclass
class DisableResult:
    cgroup: str
    left: int      # ends taken out of the sockhash after draining
    handed: int    # ends still draining, left to the service


def enable(cgroup: str | None = None, pin_dir: str = DEFAULT_PIN_DIR, config: str = "",
           ruleset: abi.RuleSet | None = None, max_sockets: int = abi.MAX_SOCKS,
           serve: bool = True, nodelay_streams: str | None = None) -> EnableResult:
    """Load and attach, or find what is already running there (and load the new rules into it).
    serve: start `mdatui serve` for it (systemd runs it as the unit's main process instead).
    nodelay_streams: see loader.load."""
    inst, already = loader.load(cgroup, pin_dir, config, ruleset, max_sockets, nodelay_streams)
    pid = service.start(pin_dir) if serve else service.running(pin_dir)
    return EnableResult(inst, already, pid)


def disable(pin_dir: str = DEFAULT_PIN_DIR) -> DisableResult:
    """Detach and unpin. Established connections go on over the normal stack, bytes intact:
    every end stops redirecting and leaves the sockhash once its reader has taken what was
    redirected to it; ends still draining after DRAIN_SECONDS are left to `mdatui serve`.
    Raises NotEnabled when nothing is pinned there.

    Unpinned, the maps and the sk_msg program live on while any socket is in the sockhash
    (each one's psock holds the program, and the program its maps): an end nobody takes out
    keeps its bytes and its fast path until it is closed.
    """
    system.require_root("disable")
    with Instance(pin_dir) as inst:
        cg = inst.cgroup
        loader.detach(pin_dir, cg)
        # One process takes ends out at a time (and counts them); the service comes back only
        # for what is still draining at the deadline.
        service.stop(pin_dir)
        inst.request_stop(list(inst.maps["sock_proxy_map"].keys()), abi.Leave.DISABLE)
        reaper = drain.Reaper(inst, all_asked=True)
        last = reaper.run(until_empty=True, deadline=time.monotonic() + DRAIN_SECONDS)
        if last.waiting:
            service.start(pin_dir)  # it opens the maps before they are unpinned below
    loader.unpin(pin_dir)
    return DisableResult(cg, reaper.left, last.waiting)
