"""The files mdatui ships besides its code: the BPF sources and the default chain rules.

They live at the top of the repository (bpf/, etc/). mdatui/_data links to them, so a wheel
carries copies inside the package and an editable checkout reads the originals through the links:
either way they are found from the package, not from where the repository happens to be.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

# A real directory, not a Traversable: BCC is given it as an include path. Every install but a
# zipped one (which mdatui does not support) has the package on a filesystem.
_DATA = Path(str(files("mdatui") / "_data"))

BPF_DIR = _DATA / "bpf"
DEFAULT_CONFIG = _DATA / "etc" / "oncn-mda.conf"
PRESETS = {"istio": _DATA / "etc" / "istio.conf"}  # `mdatui rules preset NAME`
