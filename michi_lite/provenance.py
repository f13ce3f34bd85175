"""Where a measurement was taken: hardware, software and revision, for every JSON report."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch


def run_info(preset: str) -> dict:
    """Hardware, software and revision a measurement was taken on."""
    try:
        revision = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        revision = "unknown"
    return {
        "preset": preset,
        "git_revision": revision,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
