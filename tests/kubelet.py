"""What the kubelet does to a mounted ConfigMap, and a reader of a long-running command's lines.

The kubelet writes a ConfigMap volume with its AtomicWriter: each version goes into a new
directory `..<timestamp>`, the symlink `..data` is pointed at it by renaming a fresh link over
it (one rename: readers see the old version or the new one), each key is a symlink
`KEY -> ..data/KEY` made once, keys that went are unlinked, and the old directory is removed.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path


class ConfigMapDir:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._n = 0

    def path(self, key: str) -> str:
        return str(self.root / key)

    def write(self, data: dict[str, str]) -> None:
        self._n += 1
        version = f"..2025_01_01_00_00_{self._n:02d}.{os.getpid()}"
        new = self.root / version
        new.mkdir()
        for key, text in data.items():
            (new / key).write_text(text)
        data_link = self.root / "..data"
        old = os.readlink(data_link) if data_link.is_symlink() else None
        tmp = self.root / "..data_tmp"
        os.symlink(version, tmp)
        os.rename(tmp, data_link)
        for key in data:
            if not (self.root / key).is_symlink():
                os.symlink(f"..data/{key}", self.root / key)
        for entry in self.root.iterdir():
            if entry.is_symlink() and not entry.name.startswith("..") and entry.name not in data:
                entry.unlink()
        if old:
            for f in (self.root / old).iterdir():
                f.unlink()
            (self.root / old).rmdir()


class Lines:
    """Every line a process writes to its stdout (stderr merged into it), as it comes."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_for(self, text: str, after: int = 0, timeout: float = 30) -> tuple[int, str]:
        """(index, line) of the first line from index `after` on that contains text."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(after, len(self.lines)):
                    if text in self.lines[i]:
                        return i, self.lines[i]
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._thread.is_alive()):
                    raise AssertionError(f"no line with {text!r} in {timeout} s; got:\n" + self.text())
                self._cond.wait(min(left, 0.1))

    def text(self) -> str:
        return "\n".join(self.lines)

    def finish(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout)
        self._thread.join(5)
        return code
