"""The offline demo: fit the exact patch-mixture model to shipped photographs, invert held-out ones.

Every number it prints comes from the analytic model (exact noise prediction), not from Stable
Diffusion; it shows the methods' behaviour, not the paper's numbers.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .api import Run
from .workflow.data import DEMO_EVAL, DEMO_FIT, load_photo
from .methods import METHODS
from .models import GaussianMixtureDenoiser, fit_gaussian_mixture
from .evaluation.roundtrip import round_trip

# Fixed-point baselines at about the 150 NFE the IFE paper quotes for them.
DEMO_RUNS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("ddim", {}), ("ife_noerr", {}), ("ife", {}), ("fpi", {"K": 2}), ("fpi", {"K": 3}),
    ("aidi_e", {"K": 3}), ("aidi_a", {"K": 3}),
)


def fit_demo_model(photos: Sequence[str] = DEMO_FIT, *, size: int = 128, patch_size: int = 8, n_components: int = 16,
                   stride: int = 4, max_patches: int = 20_000, seed: int = 0, **model: Any) -> GaussianMixtureDenoiser:
    """16 full-covariance components on 8 x 8 RGB patches of the fitting photographs, 20,000 patches at most;
    these defaults are the demo preset's fit (``config/demo.yaml``, tested). ``model``: keywords of the denoiser
    (e.g. a flow ``scheduler_config``: :func:`diffinv.workflow.config.mixture_path`)."""
    images = [load_photo(name, size).astype(np.float64) / 127.5 - 1.0 for name in photos]
    return fit_gaussian_mixture(images, patch_size=patch_size, n_components=n_components, stride=stride,
                                max_patches=max_patches, seed=seed, **model)


def demo_model_path(cache: str | Path | None = None) -> Path:
    """Where :func:`demo_model` keeps its fit: in ``cache`` (default: ``$XDG_CACHE_HOME/diffinv``, else
    ``~/.cache/diffinv``), named for this package's version and those of the libraries the fit depends on."""
    import hashlib
    import json
    import os
    from importlib import metadata

    from . import __version__

    if cache is None:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "diffinv"
    made_by = {"diffinv": __version__, **{p: metadata.version(p) for p in ("scikit-learn", "numpy", "pillow")}}
    key = hashlib.sha256(json.dumps(made_by, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache) / f"demo-model-{__version__}-{key}.npz"


def demo_model(cache: str | Path | None = None, **model: Any) -> GaussianMixtureDenoiser:
    """The demo preset's model (:func:`fit_demo_model` with its defaults), fitted once and cached.

    The fit (about 40 s on one core) is saved at :func:`demo_model_path`, so a new version fits anew and every
    later call loads it in a fraction of a second.
    ``model``: keywords of the denoiser at load time (``dtype``, ``device``, a flow ``scheduler_config``).
    """
    import os

    path = demo_model_path(cache)
    folder = path.parent
    if not path.is_file():
        import tempfile

        folder.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".npz")
        os.close(fd)
        try:
            fit_demo_model().save(partial)
            os.replace(partial, path)  # two processes fitting at once leave one whole file
        finally:
            Path(partial).unlink(missing_ok=True)
    return GaussianMixtureDenoiser.load(path, **model)


def label(method: str, params: dict[str, Any]) -> str:
    return method + "".join(f" {k}={v}" for k, v in params.items())


def evaluate(model: GaussianMixtureDenoiser, images: np.ndarray, runs: Iterable[tuple[str, dict[str, Any]]], *,
             num_steps: int = 50) -> list[dict[str, Any]]:
    """Round trips of a batch of uint8 images with each run; one row per run, metrics and seconds
    (inversion + reconstruction, as defined in ``diffinv.evaluation.roundtrip``) averaged over the images."""
    rows = []
    for k, (method, params) in enumerate(runs):
        run = Run(method, params, num_steps=num_steps, name=label(method, params))
        per_image = round_trip(model, run, list(images), [""] * len(images), warm_up=k == 0)
        failed = [m["status"] for m in per_image if m["status"] != "ok"]
        if failed:
            raise RuntimeError(f"{run.name}: {failed[0]}")
        rows.append({"method": run.name, "nfe": per_image[0]["nfe_inversion"],
                     **{key: float(np.mean([m[key] for m in per_image])) for key in ("mse", "psnr", "ssim")},
                     "seconds": float(np.mean([m["seconds_inversion"] + m["seconds_reconstruction"]
                                               for m in per_image]))})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'method':<18} {'NFE':>5} {'MSE':>10} {'PSNR':>7} {'SSIM':>7} {'s/image':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['method']:<18} {r['nfe']:>5d} {r['mse']:>10.3e} {r['psnr']:>7.2f} {r['ssim']:>7.4f} "
                     f"{r['seconds']:>8.3f}")
    return "\n".join(lines)


def run_demo(*, size: int = 64, num_steps: int = 50, photos: Sequence[str] = DEMO_EVAL,
             runs: Sequence[tuple[str, dict[str, Any]]] | None = None, log=print) -> list[dict[str, Any]]:
    runs = runs or DEMO_RUNS + tuple((m, {}) for m, spec in METHODS.items()
                                     if m not in {r[0] for r in DEMO_RUNS} and "vp" in spec.paths)  # a VP model
    start = time.perf_counter()
    log(f"the patch Gaussian mixture fitted to {len(DEMO_FIT)} shipped photographs (fitted once, then cached) ...")
    model = demo_model()
    log(f"  ready in {time.perf_counter() - start:.1f} s; inverting {', '.join(photos)} at {size} px, N = {num_steps}")
    images = np.stack([load_photo(name, size) for name in photos])
    rows = evaluate(model, images, runs, num_steps=num_steps)
    log(format_table(rows))
    log("Analytic demo model (exact noise prediction), mean over images: not Stable Diffusion, not the paper's "
        "numbers.")
    return rows
