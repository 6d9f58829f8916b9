"""What the README promises of the code's shape: the layers (import-linter contracts in
pyproject.toml), what each entry point loads, and a clean ruff. Runs with every `scripts/test`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_import_contracts_are_kept():
    done = _run(str(BIN / "lint-imports"), "--no-cache")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_ruff_finds_nothing():
    done = _run(str(BIN / "ruff"), "check", "--no-cache", "--output-format", "concise", ".")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def _loaded_after(code: str) -> set[str]:
    """The top-level packages a fresh interpreter holds after running code."""
    done = _run(sys.executable, "-c", code + "\nimport json, sys\n"
                "print(json.dumps(sorted({m.partition('.')[0] for m in sys.modules})))")
    assert done.returncode == 0, done.stderr[-2000:]
    return set(json.loads(done.stdout))


def test_the_console_and_the_commands_load_no_bcc():
    # BCC brings LLVM (60 MB); only `enable` and the console's enable child compile.
    loaded = _loaded_after("import mdatui.cli.main, mdatui.cli.dump_cmd, mdatui.cli.rules_cmd, "
                           "mdatui.ui.app")
    assert "textual" in loaded  # the UI was imported: the check below is not vacuous
    assert "bcc" not in loaded


def test_the_core_loads_no_textual():
    loaded = _loaded_after(
        "import importlib, pkgutil, mdatui.core\n"
        "for m in pkgutil.walk_packages(mdatui.core.__path__, 'mdatui.core.'):\n"
        "    importlib.import_module(m.name)\n")
    assert {"numpy", "mdatui"} <= loaded
    assert not {"textual", "rich"} & loaded
