"""Run by ComfyUI-Manager after requirements.txt: installs MoGe-2 without its GUI deps, checks imports.

Model weights are downloaded only on request: python -m body4d_core setup --models all
"""

import importlib
import subprocess
import sys
from pathlib import Path

REQUIRED = ["numpy", "torch", "av", "cv2", "transformers", "diffusers", "omegaconf", "trimesh", "moge"]


def install_nodeps() -> None:
    """pip install --no-deps the packages whose declared dependencies would drag in gradio (MoGe-2)."""
    req = Path(__file__).with_name("requirements-nodeps.txt")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-r", str(req)], check=False)


def main() -> int:
    install_nodeps()
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
