"""Shrink carried wheels for the device tool's 64 MiB working tree: drop what no import or kernel build reads.

gsplat's wheel is 6.5 MB, of which 5.9 MB is the vendored GLM's documentation, tests and tools; its kernels include
only ``third_party/glm/glm/``. diffusers' is 6.4 MB, of which most is its ~90 pipelines and modular pipelines, which
the product never imports (it loads the UNet, VAE, scheduler and IP-Adapter processors alone; both packages import
their pipelines lazily): their subpackages go (2.4 MB left), all but Stable Diffusion's, which the tests compare
against; their ``__init__`` and shared modules stay. This rewrites each wheel without the rest and drops their RECORD
lines, so pip installs it as usual.

    python bench/slim_wheels.py .whl/gsplat-*.whl .whl/diffusers-*.whl
"""

from __future__ import annotations

import os
import re
import sys
import zipfile
from pathlib import Path


_PIPELINE_SUBPACKAGE = re.compile(r"^diffusers/(modular_)?pipelines/(?!stable_diffusion/)[^/]+/")


def _unused(name: str) -> bool:
    if _PIPELINE_SUBPACKAGE.match(name):
        return True
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
