"""Where a measurement was taken: hardware, software, revision and command, for every JSON report."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch


def git(*args: str) -> str | None:
    """A git command's output in this package's checkout; None outside one."""
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def cpu_model() -> str:
    """The CPU's marketing name (platform.processor() is often empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_info(preset: str) -> dict:
    """Hardware, software, revision and command a measurement was taken with.

    ``git_dirty`` is true when the checkout had uncommitted changes, so a
    number is never taken for the committed code's when it is not.
    """
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "preset": preset,
        "git_revision": git("rev-parse", "--short", "HEAD") or "unknown",
        "git_dirty": bool(status) if status is not None else None,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
