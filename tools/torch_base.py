"""One shared torch installation for every development and nox environment.

Installing torch (a ~5.5 GB CUDA build) into every nox session would take minutes and
gigabytes per session. Instead a single *base* virtual environment holds only torch,
torchvision and their own dependencies, and every other environment sees it through a
``.pth`` file placed in its site-packages. pip in the child environment then treats
torch as already installed, and nothing else from the base leaks in (the base holds no
xfm dependency such as timm, transformers or streaming).

Usage::

    python tools/torch_base.py ensure            # create/repair the base, print its site dir
    python tools/torch_base.py link VENV_DIR     # make VENV_DIR see the base
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The pinned pair (timm needs torchvision; both must match).
TORCH_REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1", "numpy<2.2"]
BASE_DIR = Path(os.environ.get("XFM_TORCH_BASE", ROOT / ".nox" / "_torch-base"))
PTH_NAME = "_xfm_torch_base.pth"


def _python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def site_packages(venv: Path) -> Path:
    """Return the purelib site-packages directory of a virtual environment."""
    out = subprocess.run(
        [str(_python(venv)), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def _base_ok() -> bool:
    py = _python(BASE_DIR)
    if not py.exists():
        return False
    code = "import torch, torchvision; print(torch.__version__)"
    res = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
    return res.returncode == 0 and res.stdout.startswith(TORCH_REQUIREMENTS[0].split("==")[1])


def ensure_base() -> Path:
    """Create the base environment if it is missing or broken; return its site-packages."""
    if not _base_ok():
        print(f"[torch_base] creating {BASE_DIR} with {' '.join(TORCH_REQUIREMENTS)}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(BASE_DIR)], check=True)
        subprocess.run(
            [str(_python(BASE_DIR)), "-m", "pip", "install", "-q", *TORCH_REQUIREMENTS], check=True
        )
    return site_packages(BASE_DIR)


def link(venv: Path) -> Path:
    """Write a ``.pth`` file into ``venv`` so that it imports torch from the base."""
    base_site = ensure_base()
    target = site_packages(venv) / PTH_NAME
    target.write_text(f"{base_site}\n")
    return target


def main(argv: list[str]) -> int:
    if len(argv) >= 1 and argv[0] == "ensure":
        print(ensure_base())
        return 0
    if len(argv) == 2 and argv[0] == "link":
        print(link(Path(argv[1]).resolve()))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

__all__ = ["BASE_DIR", "TORCH_REQUIREMENTS", "ensure_base", "link", "site_packages"]
