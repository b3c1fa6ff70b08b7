"""The last step of `python build.py setup --gpu`: the GPU torch sees, its memory, and whether a model is here.

    python -m backend.gpu_check [MODEL]

Exit status 1 when torch sees no CUDA GPU (the environment is then of no use to the add-on); a missing model
is reported with how to fetch it but is not an error (the procedural prior needs nothing).
"""

from __future__ import annotations

import sys

import torch

from backend.jobs.models import PROCEDURAL, ModelMissing, check_model


def main(argv: list[str]) -> int:
    model = argv[0] if argv else PROCEDURAL
    if not torch.cuda.is_available():
        print(f"error: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA GPU: is the NVIDIA driver "
              "installed and new enough for that CUDA version (`nvidia-smi` shows the highest it supports)?",
              file=sys.stderr)
        return 1
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        print(f"GPU {i}: {props.name}, {props.total_memory / 2**30:.1f} GiB, torch {torch.__version__} "
              f"(CUDA {torch.version.cuda})")
    try:
        check_model(model)
        print(f"model '{model}': present on this machine")
    except ModelMissing as exc:
        print(f"model: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
