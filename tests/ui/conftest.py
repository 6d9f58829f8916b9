"""The console's tests run against tests/ui/fake.py unless marked kernel. Clocks are shown in
UTC, so that the snapshots do not depend on where they are taken."""

from __future__ import annotations

import asyncio
import inspect
import os
import time

import pytest

os.environ["TZ"] = "UTC"
time.tzset()


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Runs `async def` tests (Textual's Pilot is async) on a fresh event loop each."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(pyfuncitem.obj(**args))
    return True
