"""One shard of the workflow: invert and reconstruct every image of a manifest slice with one run.

One model load serves the shard. Every image gives one row: NFE counted by the model, seconds of
inversion and reconstruction, peak memory, status (``ok`` or ``error: <reason>``) and the metrics
against the input image and against the model's own round trip ``decode(encode(x))``. A bad image
or a method that diverges becomes an error row; the shard goes on.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from .api import invert, reconstruct
from .config import Run
from .images import load_image, save_image, to_tensor, to_uint8
from .metrics import image_metrics
from .models.base import DiffusionModel

log = logging.getLogger(__name__)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}
IMAGE_METRICS = ("mse", "psnr", "ssim")
Perceptual = Callable[[np.ndarray, np.ndarray], dict[str, float]]


def row_columns(lpips_nets: Sequence[str]) -> list[str]:
    """The columns of a shard's CSV, in order; ``*_vae`` compare with the round trip."""
    quality = [*IMAGE_METRICS, *(f"lpips_{n}" for n in lpips_nets)]
    return ["dataset", "run", "method", "params", "num_steps", "guidance", "reconstruction_guidance", "index", "id",
            "status", "nfe_inversion", "nfe_reconstruction", "seconds_inversion", "seconds_reconstruction",
            "peak_mem_mb", "peak_mem_kind", *quality, "latent_mse", *(f"{m}_vae" for m in quality)]


def load_model(model_cfg: dict[str, Any], weights: str | Path) -> DiffusionModel:
    """The configured backend from local weights: a fitted .npz, a snapshot folder, or the JSON
    manifest ``fetch_weights`` writes for one (its ``folder``); never the network."""
    device = torch.device(model_cfg["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"model.device is {model_cfg['device']!r} but CUDA is not available on this machine; "
                           "set model.device: cpu (slow for Stable Diffusion) or run where a GPU is")
    dtype = DTYPES[model_cfg["dtype"]]
    if model_cfg["kind"] == "gaussian_mixture":
        from .models import GaussianMixtureDenoiser

        return GaussianMixtureDenoiser.load(weights, dtype=dtype)
    from .models.stable_diffusion import StableDiffusionBackend

    if str(weights).endswith(".json"):
        weights = json.loads(Path(weights).read_text())["folder"]
    return StableDiffusionBackend.from_pretrained(Path(weights), device=device, dtype=dtype, local_files_only=True)


class _Peak:
    """Peak memory of one image: CUDA allocator peak, or the process's max RSS on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.kind = "cuda_max_allocated" if self.cuda else "process_max_rss"
        self.device = device

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def read_mb(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _finite(x: Any) -> bool:
    tensors = [x] if isinstance(x, Tensor) else [t for t in x if isinstance(t, Tensor)]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def _quality(reference: np.ndarray, test: np.ndarray, perceptual: Perceptual | None) -> dict[str, float]:
    values = image_metrics(reference, test)
    if perceptual is not None:
        values.update(perceptual(reference, test))  # keys lpips_<net>
    return values


class Checkpoint:
    """The finished images of an interrupted shard: one JSON row per image, written atomically after
    its PNG and latents, kept in a folder the workflow does not delete when a job dies. Rows are
    keyed by manifest index and id and only reused for the same run settings."""

    def __init__(self, folder: str | Path, run: Run) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.signature = run.signature

    def _path(self, item: dict[str, Any]) -> Path:
        return self.folder / f"{int(item['index']):06d}.json"

    def load(self, item: dict[str, Any]) -> dict[str, Any] | None:
        path = self._path(item)
        if not path.is_file():
            return None
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved["signature"] != self.signature or saved["row"]["id"] != item["id"]:
            return None
        return saved["row"]

    def save(self, item: dict[str, Any], row: dict[str, Any]) -> None:
        from .download import atomic_write_text

        # json keeps NaN and every float's exact repr, so a resumed row equals the one computed
        atomic_write_text(self._path(item), json.dumps({"signature": self.signature, "row": row}))


def run_shard(model: DiffusionModel, run: Run, items: Iterable[dict[str, Any]], *, images_dir: str | Path,
              resolution: int, dataset: str, prompt: str = "caption", perceptual: Perceptual | None = None,
              lpips_nets: Sequence[str] = (), keep: set[str] = frozenset(), recon_dir: str | Path | None = None,
              save_latents: bool = False, checkpoint: str | Path | None = None) -> list[dict[str, Any]]:
    """Rows for the manifest ``items`` (dicts with ``index, id, file, caption, status``).

    ``keep``: ids whose reconstruction is saved as ``recon_dir/<id>.png`` (the qualitative subset).
    ``checkpoint``: a folder where each finished image is recorded; a rerun after an interruption takes
    those rows (and files) from it instead of recomputing them. The caller removes it once the shard's
    rows are safely written.
    """
    columns = row_columns(lpips_nets)
    peak = _Peak(model.device)
    saved = Checkpoint(checkpoint, run) if checkpoint is not None else None
    artefacts = saved.folder if saved is not None else recon_dir  # files go with their row
    rows, warmed = [], False
    for item in items:
        previous = saved.load(item) if saved is not None else None
        if previous is not None:
            rows.append(previous)
            log.info("%s %s: resumed (%s)", run.name, item["id"], previous["status"])
            continue
        row = dict.fromkeys(columns, math.nan)
        row.update(dataset=dataset, index=item["index"], id=item["id"], peak_mem_kind=peak.kind,
                   **run.as_dict())
        try:
            row.update(_one_image(model, run, item, images_dir, resolution, prompt, perceptual, peak, not warmed,
                                  artefacts if item["id"] in keep else None,
                                  artefacts if save_latents else None))
            row["status"] = "ok"
            warmed = True
        except Exception as exc:  # one bad image is one error row; the shard goes on
            log.error("%s %s: %s", run.name, item["id"], exc)
            row["status"] = f"error: {exc}".replace("\n", " ")
        rows.append(row)
        if saved is not None:
            saved.save(item, row)
        log.info("%s %s: %s", run.name, item["id"], row["status"] if row["status"] != "ok" else
                 f"psnr {row['psnr']:.2f} nfe {row['nfe_inversion']}")
    if saved is not None and recon_dir is not None:
        import shutil

        Path(recon_dir).mkdir(parents=True, exist_ok=True)
        for row in rows:
            for suffix in (".png", ".safetensors"):
                source = saved.folder / f"{row['id']}{suffix}"
                if source.is_file():
                    shutil.copyfile(source, Path(recon_dir) / source.name)
    return rows


def _prepare(model: DiffusionModel, item: dict[str, Any], images_dir: str | Path, resolution: int,
             prompt: str) -> tuple[np.ndarray, str, Tensor]:
    """The image (uint8), its prompt and its clean latent; errors say what is wrong with the item."""
    if item.get("manifest_error"):
        raise ValueError(f"bad manifest row ({item['manifest_error']}); not read")
    if item.get("status", "ok") != "ok":
        raise ValueError(f"not acquired ({item['status']})")
    image = load_image(Path(images_dir) / item["file"], size=resolution)
    caption = item.get("caption") or ""
    if prompt == "caption" and not caption.strip():
        raise ValueError("empty caption (prompt: caption)")
    x = to_tensor(image, dtype=torch.float64 if model.dtype == torch.float64 else torch.float32)
    return image, caption if prompt == "caption" else "", model.encode(x)


def _one_image(model: DiffusionModel, run: Run, item: dict[str, Any], images_dir: str | Path, resolution: int,
               prompt: str, perceptual: Perceptual | None, peak: _Peak, warm_up: bool,
               png_dir: str | Path | None, latent_dir: str | Path | None) -> dict[str, Any]:
    image, text, z0 = _prepare(model, item, images_dir, resolution, prompt)
    roundtrip = to_uint8(model.decode(z0))[0]
    if warm_up:  # the first network pass of a process pays one-off costs; keep them out of the timing
        with torch.no_grad():
            model.eps(z0, model.schedule(run.num_steps).timesteps[1], model.as_conditioning(text, 1), run.guidance)

    peak.reset()
    peak.sync()
    start, nfe0 = time.perf_counter(), model.nfe
    result = invert(run.method, model, z0, text, num_steps=run.num_steps, guidance=run.guidance, **run.params)
    peak.sync()
    inverted, nfe1 = time.perf_counter(), model.nfe
    if not _finite(result.state):
        raise FloatingPointError("non-finite inverted latent")
    z0_hat = reconstruct(run.method, model, result, text, guidance=run.reconstruction_guidance)
    peak.sync()
    done = time.perf_counter()
    if not torch.isfinite(z0_hat).all():
        raise FloatingPointError("non-finite reconstruction")
    recon = to_uint8(model.decode(z0_hat))[0]

    out: dict[str, Any] = {"nfe_inversion": nfe1 - nfe0, "nfe_reconstruction": model.nfe - nfe1,
                           "seconds_inversion": inverted - start, "seconds_reconstruction": done - inverted,
                           "peak_mem_mb": peak.read_mb(),
                           "latent_mse": float(((z0_hat.double() - z0.double()) ** 2).mean())}
    out.update(_quality(image, recon, perceptual))
    out.update({f"{k}_vae": v for k, v in _quality(roundtrip, recon, perceptual).items()})
    if png_dir is not None:
        save_image(recon, Path(png_dir) / f"{item['id']}.png")
    if latent_dir is not None:
        from safetensors.torch import save_file

        save_file({"z0": z0.cpu().contiguous(), "zN": result.latent.cpu().contiguous()},
                  str(Path(latent_dir) / f"{item['id']}.safetensors"))
    return out


def error_statistics(model: DiffusionModel, run: Run, items: Sequence[dict[str, Any]], *, images_dir: str | Path,
                     resolution: int, prompt: str = "caption", tol: float, max_iter: int) -> list[dict[str, Any]]:
    """Figure 2 rows (``diffinv.stats.fixed_point_errors``) per usable image, one image at a time; an
    unusable image is logged and skipped (its error row is in the invert results)."""
    from .stats import fixed_point_errors

    rows = []
    for item in items:
        try:
            _, text, z0 = _prepare(model, item, images_dir, resolution, prompt)
        except ValueError as exc:
            log.warning("%s %s skipped: %s", run.name, item["id"], exc)
            continue
        result = invert(run.method, model, z0, text, num_steps=run.num_steps, guidance=run.guidance, trajectory=True,
                        **run.params)
        for r in fixed_point_errors(model, result, text, tol=tol, max_iter=max_iter):
            r.pop("image")  # always 0: one image per call
            rows.append({"run": run.name, "method": run.method, "id": item["id"], **r})
    return rows
