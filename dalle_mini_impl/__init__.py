"""dalle_mini_impl: a DALL·E-style text-to-image model built from scratch.

One module per idea, imported on first use so that a lesson only pays for what
it touches::

    import dalle_mini_impl as dmi
    device = dmi.setup(seed=0)       # seeds everything, prints the device in one line
    dmi.shapes.render(...)           # lesson 0: the data
    dmi.bpe.ByteLevelBPE.train(...)  # lesson 1: the tokenizer

Paths (``PACKAGE_DIR``, ``REPO_DIR``, ``DATA_DIR``, ``CACHE_DIR``) are resolved
from this file's location, never from the current directory, so notebooks,
tests and the CLI agree wherever they are started.
"""

from __future__ import annotations

import importlib
import os
import random
from pathlib import Path

__version__ = "0.1.0"

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
DATA_DIR = Path(os.environ.get("DMI_DATA_DIR", REPO_DIR / "data"))
CACHE_DIR = Path(os.environ.get("DMI_CACHE_DIR", REPO_DIR / ".cache"))

_SUBMODULES = {
    "shapes", "grader", "bpe", "dvae", "attention", "transformer", "sampling", "clip",
    "checkpoints", "defaults", "images", "train_common", "train_dvae", "train_transformer", "train_clip", "pipeline", "evaluate",
    "folder_data", "distributed", "train_all",
    "viz_common", "viz_bpe", "viz_dvae", "viz_transformer", "viz_clip", "viz_pipeline", "widgets", "exercises", "cli",
}


def __getattr__(name: str):
    """Import ``dmi.<module>`` lazily on first attribute access."""
    if name in _SUBMODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'dalle_mini_impl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_SUBMODULES))


def get_device(prefer: str | None = None) -> str:
    """Return ``"cuda"`` when a GPU is available (or ``prefer`` when given), else ``"cpu"``."""
    if prefer:
        return prefer
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch (CPU and every GPU) with one number."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def setup(seed: int = 0, verbose: bool = True) -> str:
    """The one call at the top of every lesson: seed, set print options, pick the device.

    Prints a single line such as ``device: cpu | torch 2.13.0 | seed 0`` and
    returns the device string to pass to ``.to(device)``.
    """
    import numpy as np
    import torch

    seed_everything(seed)
    np.set_printoptions(precision=4, suppress=True, linewidth=100)
    torch.set_printoptions(precision=4, sci_mode=False, linewidth=100)
    device = get_device()
    if verbose:
        name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
        print(f"device: {name} | torch {torch.__version__.split('+')[0]} | seed {seed}")
    return device


__all__ = ["PACKAGE_DIR", "REPO_DIR", "DATA_DIR", "CACHE_DIR", "get_device", "seed_everything", "setup"]
