"""Shrink carried wheels for the device tool's 64 MiB working tree: drop what no import or kernel build reads.

gsplat's wheel is 6.5 MB, of which 5.9 MB is the vendored GLM's documentation, tests and tools; its kernels include
only ``third_party/glm/glm/``. This rewrites the wheel without the rest (0.65 MB) and drops their RECORD lines, so
pip installs it as usual.

    python bench/slim_wheels.py .whl/gsplat-*.whl
"""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path


def _unused(name: str) -> bool:
    return "/third_party/glm/" in name and "/third_party/glm/glm/" not in name and not name.endswith("copying.txt")


def slim(wheel: Path) -> tuple[int, int]:
    """Rewrite ``wheel`` in place without unused files; returns (bytes before, bytes after)."""
    before = wheel.stat().st_size
    tmp = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            if _unused(info.filename):
                continue
            data = src.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = [line for line in data.decode().splitlines() if not _unused(line.split(",")[0])]
                data = ("\n".join(lines) + "\n").encode()
            out.writestr(info, data)
    os.replace(tmp, wheel)
    return before, wheel.stat().st_size


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        b, a = slim(Path(arg))
        print(f"{arg}: {b / 1e6:.2f} MB -> {a / 1e6:.2f} MB")
