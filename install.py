"""Run by ComfyUI-Manager after requirements.txt: checks the environment, downloads nothing.

Model weights are downloaded only on request: python -m body4d_core setup --models all
"""

import importlib
import sys

REQUIRED = ["numpy", "torch", "av", "cv2", "transformers", "diffusers", "omegaconf", "trimesh"]


def main() -> int:
    missing = []
    for name in REQUIRED:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        print(f"[SAM-Body4D] missing packages: {', '.join(missing)}; run pip install -r requirements.txt")
        return 1
    print("[SAM-Body4D] dependencies OK. Download weights with: python -m body4d_core setup --models all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
