"""Reading the throughput measurements ``benchmarks/sd_throughput.py`` writes: the key of this machine's device,
and the seconds per network call measured there, which the budget notebook prices a preset with.

The file is keyed device name -> dtype -> batch size; each entry holds seconds per UNet call and per image-pass,
the VAE's and the text encoder's seconds, and the settings of the measurement (the benchmark's docstring).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch


# --- naming the device ------------------------------------------------------------------------

def device_name(device: str | torch.device) -> str:
    """The key of this machine's device: the GPU's name, or the CPU's model name and thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type != "cpu":
        raise ValueError(f"no device name for {device.type} devices")
    model = None
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    # Not Linux, or an ARM /proc/cpuinfo without a model name: the platform's own name for the CPU
    model = model or platform.processor() or platform.machine()
    threads = torch.get_num_threads()
    return f"{model} ({threads} thread{'s' if threads != 1 else ''})"


def dtype_name(dtype: torch.dtype | str) -> str:
    return dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")


# --- the file ---------------------------------------------------------------------------------

def read_results(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def lookup(path: str | os.PathLike, device: str, dtype: torch.dtype | str, batch_size: int) -> dict[str, Any] | None:
    """The entry of ``device`` at ``dtype`` and ``batch_size`` in the file at ``path``, or None if unmeasured."""
    results = read_results(path)
    return results["devices"].get(device, {}).get(dtype_name(dtype), {}).get(str(batch_size))
