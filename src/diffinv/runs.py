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
            "batch_size", "batch_id", "peak_mem_mb", "peak_mem_kind", *quality, "latent_mse",
            *(f"{m}_vae" for m in quality)]


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
              save_latents: bool = False, checkpoint: str | Path | None = None,
              batch_size: int = 1) -> list[dict[str, Any]]:
    """Rows for the manifest ``items`` (dicts with ``index, id, file, caption, status``), in their order.

    ``keep``: ids whose reconstruction is saved as ``recon_dir/<id>.png`` (the qualitative subset).
    ``checkpoint``: a folder where each finished image is recorded; a rerun after an interruption takes
    those rows (and files) from it instead of recomputing them. The caller removes it once the shard's
    rows are safely written.
    ``batch_size``: images inverted together, one network call per step for all of them. Each image is
    still encoded, decoded and scored alone, and its prompt embedded alone, so nothing of it depends on
    its neighbours but the network's batched arithmetic: on the analytic model a row equals its batch-1
    row bit for bit; a UNet's batched convolutions sum in another order (about 1e-6 in float32). NFE is
    the counter's, which every call of the batch advances once; seconds are the batch's divided by its
    images; ``batch_size`` says how many shared them and ``batch_id`` (the manifest index of the batch's
    first image) which rows share one timing.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    columns = row_columns(lpips_nets)
    peak = _Peak(model.device)
    saved = Checkpoint(checkpoint, run) if checkpoint is not None else None
    artefacts = saved.folder if saved is not None else recon_dir  # files go with their row
    items = list(items)
    rows: list[dict[str, Any] | None] = [None] * len(items)
    pending = []
    for position, item in enumerate(items):
        previous = saved.load(item) if saved is not None else None
        if previous is None:
            pending.append(position)
        else:
            rows[position] = previous
            log.info("%s %s: resumed (%s)", run.name, item["id"], previous["status"])
    warmed = False
    for first in range(0, len(pending), batch_size):
        group = pending[first:first + batch_size]
        outcomes = _invert_group(model, run, [items[p] for p in group], images_dir=images_dir, resolution=resolution,
                                 prompt=prompt, perceptual=perceptual, peak=peak, warm_up=not warmed,
                                 png_dir=artefacts, keep=keep, latent_dir=artefacts if save_latents else None)
        for position, outcome in zip(group, outcomes):
            item = items[position]
            row = dict.fromkeys(columns, math.nan)
            row.update(dataset=dataset, index=item["index"], id=item["id"], peak_mem_kind=peak.kind,
                       **run.as_dict(), **outcome)
            rows[position] = row
            if saved is not None:
                saved.save(item, row)
            log.info("%s %s: %s", run.name, item["id"], row["status"] if row["status"] != "ok" else
                     f"psnr {row['psnr']:.2f} nfe {row['nfe_inversion']}")
        warmed = warmed or any(o["status"] == "ok" for o in outcomes)
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


def _error(exc: BaseException) -> dict[str, Any]:
    return {"status": f"error: {exc}".replace("\n", " ")}


def _invert_group(model: DiffusionModel, run: Run, items: Sequence[dict[str, Any]], *, images_dir: str | Path,
                  resolution: int, prompt: str, perceptual: Perceptual | None, peak: _Peak, warm_up: bool,
                  png_dir: str | Path | None, keep: set[str], latent_dir: str | Path | None) -> list[dict[str, Any]]:
    """One outcome per item: its measurements with ``status: ok``, or ``status: error: <reason>``."""
    outcomes: list[dict[str, Any]] = [{} for _ in items]
    ready = []
    for j, item in enumerate(items):
        try:
            ready.append((j, *_prepare(model, item, images_dir, resolution, prompt)))
        except Exception as exc:  # one bad image is one error row; the shard goes on
            log.error("%s %s: %s", run.name, item["id"], exc)
            outcomes[j] = _error(exc)
    if not ready:
        return outcomes
    failure = None
    try:
        measured = _invert_batch(model, run, [r[1:] for r in ready], perceptual, peak, warm_up,
                                 batch_id=items[ready[0][0]]["index"])
    except Exception as exc:
        failure = _error(exc)  # keep the reason only: the traceback would hold the batch's tensors
    if failure is not None and len(ready) == 1:
        measured = [(failure, None, None)]
    elif failure is not None:  # e.g. out of memory: each image alone, so a failure is charged to its image
        log.warning("%s: a batch of %d failed (%s); inverting its images one at a time", run.name, len(ready),
                    failure["status"][len("error: "):])
        return [outcomes[j] or _invert_group(model, run, [item], images_dir=images_dir, resolution=resolution,
                                             prompt=prompt, perceptual=perceptual, peak=peak, warm_up=False,
                                             png_dir=png_dir, keep=keep, latent_dir=latent_dir)[0]
                for j, item in enumerate(items)]
    for (j, *_), (outcome, recon, latents) in zip(ready, measured):
        item = items[j]
        if outcome["status"] != "ok":
            log.error("%s %s: %s", run.name, item["id"], outcome["status"])
        if recon is not None and png_dir is not None and item["id"] in keep:
            save_image(recon, Path(png_dir) / f"{item['id']}.png")
        if latents is not None and latent_dir is not None:
            from safetensors.torch import save_file

            save_file(latents, str(Path(latent_dir) / f"{item['id']}.safetensors"))
        outcomes[j] = outcome
    return outcomes


def _finite_rows(state: Any) -> Tensor:
    """Per image: are all values of the (possibly nested) inverted state finite?"""
    if isinstance(state, Tensor):
        return torch.isfinite(state.flatten(1)).all(1).cpu()
    return torch.stack([_finite_rows(part) for part in state]).all(0)


def _invert_batch(model: DiffusionModel, run: Run, prepared: Sequence[tuple[np.ndarray, str, Tensor]],
                  perceptual: Perceptual | None, peak: _Peak, warm_up: bool,
                  batch_id: int) -> list[tuple[dict[str, Any], np.ndarray | None, dict[str, Tensor] | None]]:
    """Invert and reconstruct the prepared images together; per image its outcome, reconstruction and latents.
    ``batch_id`` (the manifest index of the batch's first image) marks the rows that share one timing."""
    images, texts, latents = zip(*prepared)
    n, z0 = len(prepared), torch.cat(latents)
    cond = model.condition(list(texts), n)  # embedded one prompt at a time
    roundtrips = [to_uint8(model.decode(z))[0] for z in latents]
    if warm_up:  # the first network pass of a process pays one-off costs; keep them out of the timing
        with torch.no_grad():
            model.eps(z0, model.schedule(run.num_steps).timesteps[1], cond, run.guidance)

    peak.reset()
    peak.sync()
    start, nfe0 = time.perf_counter(), model.nfe
    result = invert(run.method, model, z0, cond, num_steps=run.num_steps, guidance=run.guidance, **run.params)
    peak.sync()
    inverted, nfe1 = time.perf_counter(), model.nfe
    z0_hat = reconstruct(run.method, model, result, cond, guidance=run.reconstruction_guidance)
    peak.sync()
    done = time.perf_counter()
    cost = {"nfe_inversion": nfe1 - nfe0, "nfe_reconstruction": model.nfe - nfe1, "batch_size": n, "batch_id": batch_id,
            "seconds_inversion": (inverted - start) / n, "seconds_reconstruction": (done - inverted) / n,
            "peak_mem_mb": peak.read_mb()}
    # an image that diverges is an error row; its neighbours are untouched (no operation mixes images)
    finite_state, finite_recon = _finite_rows(result.state), _finite_rows(z0_hat)
    out = []
    for b in range(n):
        if not finite_state[b] or not finite_recon[b]:
            reason = "non-finite inverted latent" if not finite_state[b] else "non-finite reconstruction"
            out.append(({"status": f"error: {reason}"}, None, None))
            continue
        recon = to_uint8(model.decode(z0_hat[b:b + 1]))[0]
        values = {"status": "ok", **cost,
                  "latent_mse": float(((z0_hat[b:b + 1].double() - latents[b].double()) ** 2).mean())}
        values.update(_quality(images[b], recon, perceptual))
        values.update({f"{k}_vae": v for k, v in _quality(roundtrips[b], recon, perceptual).items()})
        out.append((values, recon, {"z0": latents[b].cpu().contiguous(),
                                    "zN": result.latent[b:b + 1].cpu().contiguous()}))
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
