"""The environment: which device the course runs on, seeding, and a report for bug reports.

Explained in notebook 00_welcome. Every notebook starts with `device = lora_edu.setup(seed=0)`,
so the device is chosen in one place (`get_device`) and can be forced with the
environment variable ``LORA_EDU_DEVICE``.
"""
from __future__ import annotations

import os
import platform
import random
from importlib import metadata

import numpy as np
import torch

from . import _validate

DEVICE_ENV_VAR = "LORA_EDU_DEVICE"
ALLOWED_DEVICES = ("cpu", "cuda", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """The device kinds this machine can run on, in order of preference (CUDA, Apple MPS, CPU)."""
    found = [name for name, present in (("cuda", torch.cuda.is_available()), ("mps", _mps_available())) if present]
    return found + ["cpu"]


def get_device(requested: str | None = None) -> torch.device:
    """Return the device the course runs on: CUDA if present, else Apple MPS, else the CPU.

    ``requested`` (or, when it is None, the environment variable ``LORA_EDU_DEVICE``) forces one
    of ``"cpu"``, ``"cuda"`` or ``"mps"``. Any other value, or a device this machine lacks, raises
    ``ValueError`` naming the variable and the allowed values. See notebook 00_welcome.
    """
    source = "requested" if requested is not None else DEVICE_ENV_VAR
    requested = requested if requested is not None else os.environ.get(DEVICE_ENV_VAR, "").strip()
    if not requested:
        return torch.device(available_devices()[0])
    name = requested.strip().lower()
    if name not in ALLOWED_DEVICES:
        raise ValueError(f"{source}={requested!r} is not a device the course knows; allowed values: "
                         f"{', '.join(ALLOWED_DEVICES)} (or leave it unset to pick automatically)")
    if name not in available_devices():
        raise ValueError(f"{source}={requested!r} asks for a device this machine does not have; "
                         f"available here: {', '.join(available_devices())}")
    return torch.device(name)


def seed_everything(seed: int = 0) -> None:
    """Seed Python's `random`, NumPy's global generator and torch (CPU and every CUDA device).

    Call it before every cell that draws random numbers, so each cell gives the same result
    however often, and in whatever order, cells were run before it. See notebook 00_welcome.
    """
    _validate.integer("seed", seed, 0, 2**32 - 1)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def setup(seed: int = 0) -> torch.device:
    """One call at the top of every notebook: seed everything and return the device to use.

    Also sets matplotlib's defaults for small, sharp stored figures. See notebook 00_welcome.
    """
    import matplotlib as mpl

    mpl.rcParams.update({"figure.dpi": 80, "savefig.dpi": 80, "figure.figsize": (6.0, 3.6),
                         "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
                         "axes.spines.right": False})
    seed_everything(seed)
    return get_device()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment_report() -> dict[str, str]:
    """What this environment is: Python, package versions, the chosen device and the CPU threads.

    Printed by notebook 00_welcome; paste it into a bug report.
    """
    device = get_device()
    report = {
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "torch": torch.__version__,
        "numpy": np.__version__,
        **{package: _version(package) for package in ("matplotlib", "ipywidgets", "scikit-learn", "peft", "lora_edu")},
        "device": str(device),
        "devices available": ", ".join(available_devices()),
        DEVICE_ENV_VAR: os.environ.get(DEVICE_ENV_VAR, "") or "(unset: automatic)",
        "torch CPU threads": str(torch.get_num_threads()),
        "CPU cores": str(os.cpu_count()),
    }
    if device.type == "cuda":
        report["GPU"] = torch.cuda.get_device_name(device)
        report["CUDA (torch build)"] = str(torch.version.cuda)
    return report


def format_report(report: dict[str, str]) -> str:
    """The report as aligned ``name: value`` lines."""
    width = max(len(k) for k in report)
    return "\n".join(f"{k:<{width}} : {v}" for k, v in report.items())

