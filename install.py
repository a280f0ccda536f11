"""Run by ComfyUI-Manager after requirements.txt: installs MoGe-2 without its GUI deps, checks every import.

Model weights are downloaded only on request: python -m body4d_core setup --models all
"""

import importlib
import platform
import subprocess
import sys
from pathlib import Path

# import name -> pip package; every third-party module the nodes and body4d_core import at run time
REQUIRED = {
    "torch": "torch", "torchvision": "torchvision", "numpy": "numpy", "PIL": "pillow", "psutil": "psutil",
    "yaml": "pyyaml", "omegaconf": "omegaconf", "safetensors": "safetensors", "huggingface_hub": "huggingface_hub",
    "av": "av", "cv2": "opencv-python-headless", "transformers": "transformers", "diffusers": "diffusers",
    "scipy": "scipy", "roma": "roma", "trimesh": "trimesh", "pygltflib": "pygltflib",
    "websocket": "websocket-client", "moge": "dlr-moge (--no-deps)", "utils3d": "dlr-utils3d (--no-deps)",
}
if platform.system() != "Darwin":
    REQUIRED["decord"] = "decord"


def install_nodeps() -> None:
    """pip install --no-deps the packages whose declared dependencies would drag in gradio (MoGe-2)."""
    req = Path(__file__).with_name("requirements-nodeps.txt")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-r", str(req)], check=False)


def missing_packages() -> list[str]:
    """The pip names of required modules that do not import (with the reason)."""
    missing = []
    for module, package in REQUIRED.items():
        try:
            importlib.import_module(module)
        except Exception as err:  # noqa: BLE001 - a broken install (e.g. torchvision built for another torch) counts too
            missing.append(f"{package} ({type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''})")
    return missing


def main() -> int:
    install_nodeps()
    missing = missing_packages()
    if missing:
        print("[SAM-Body4D] these packages are missing or broken:\n  " + "\n  ".join(missing))
        print("[SAM-Body4D] install them: pip install -r requirements.txt && pip install --no-deps -r "
              "requirements-nodeps.txt (torch and torchvision: a matching pair, see README Install)")
        return 1
    print("[SAM-Body4D] dependencies OK. Download weights with: python -m body4d_core setup --models all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
