"""How a benchmark ends: its result printed, or one line saying why there is none."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable

from mdatui.core.kernel import system


def run_and_print(run: Callable[[], dict], table: Callable[[dict], str], as_json: bool) -> int:
    """run() builds labs that remove themselves while unwinding; SIGTERM unwinds like Ctrl-C."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        result = run()
    except system.SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the labs and the accelerator were removed", file=sys.stderr)
        return 130
    print(json.dumps(result, indent=2) if as_json else table(result))
    return 0
