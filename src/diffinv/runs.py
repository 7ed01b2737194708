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
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from .api import invert
from .config import ErrorStatsJob, InvertJob, ModelSpec
from .images import load_image, save_image
from .models.base import DiffusionModel
from .provenance import library_versions
from .roundtrip import Peak, Perceptual, encode, round_trip

log = logging.getLogger(__name__)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}
IMAGE_METRICS = ("mse", "psnr", "ssim")
# Where a row came from: the code fingerprint the workflow passed, the libraries that computed it, the
# weights, and the dtype and device the model actually ran in.
PROVENANCE = ("code", "torch_version", "diffusers_version", "transformers_version", "lpips_version", "model",
              "weights_sha256", "dtype", "latent_dtype", "device")


def row_columns(lpips_nets: Sequence[str]) -> list[str]:
    """The columns of a shard's CSV, in order; ``*_vae`` compare with the round trip."""
    quality = [*IMAGE_METRICS, *(f"lpips_{n}" for n in lpips_nets)]
    return ["dataset", "run", "method", "params", "num_steps", "guidance", "reconstruction_guidance", "run_dtype",
            "index", "id",
            "status", "nfe_inversion", "nfe_reconstruction", "seconds_inversion", "seconds_reconstruction",
            "batch_size", "batch_id", "peak_mem_mb", "peak_mem_kind", *quality, "latent_mse",
            *(f"{m}_vae" for m in quality), *PROVENANCE]


def load_model(spec: ModelSpec, weights: str | Path) -> DiffusionModel:
    """The configured backend from local weights: a fitted .npz, a snapshot folder, or the JSON
    manifest ``fetch_weights`` writes for one (its ``folder``); never the network."""
    device = torch.device(spec.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"model.device is {spec.device!r} but CUDA is not available on this machine; "
                           "set model.device: cpu (slow for Stable Diffusion) or run where a GPU is")
    dtype = DTYPES[spec.dtype]
    if spec.kind == "gaussian_mixture":
        from .models import GaussianMixtureDenoiser

        return GaussianMixtureDenoiser.load(weights, dtype=dtype)
    from .models import BACKENDS

    if str(weights).endswith(".json"):
        weights = json.loads(Path(weights).read_text())["folder"]
    options = {"channels_last": spec.channels_last} if spec.kind in ("stable_diffusion", "sdxl", "pixel") else {}
    if spec.kind in ("sdxl", "sd3", "flux"):
        options["resolution"] = spec.resolution  # the size a resolution-dependent schedule is built for
    return BACKENDS[spec.kind].from_pretrained(
        Path(weights), device=device, dtype=dtype, local_files_only=True, compile=spec.compile,
        latent_dtype=DTYPES[spec.latent_dtype] if spec.latent_dtype else None, **options)


def origin(model: DiffusionModel, spec: ModelSpec, *, code: str = "", weights_sha256: str = "") -> dict[str, str]:
    """The provenance columns of a row. dtype and device are the model's own, and must be the job's."""
    dtype, device, wanted = str(model.dtype).removeprefix("torch."), str(model.device), torch.device(spec.device)
    if dtype != spec.dtype or model.device.type != wanted.type or wanted.index not in (None, model.device.index):
        raise ValueError(f"the model runs in {dtype} on {device}, but the job says {spec.dtype} on {spec.device}")
    latent_dtype = str(model.latent_dtype).removeprefix("torch.")
    if latent_dtype != (spec.latent_dtype or spec.dtype):
        raise ValueError(f"the model's latents are {latent_dtype}, but the job says {spec.latent_dtype or spec.dtype}")
    return {"code": code, **library_versions(), "model": spec.identity, "weights_sha256": weights_sha256,
            "dtype": dtype, "latent_dtype": latent_dtype, "device": device}


class Checkpoint:
    """The finished images of an interrupted shard: one JSON row per image, written atomically after
    its PNG and latents, kept in a folder the workflow does not delete when a job dies. Rows are
    keyed by manifest index and id and reused only under the same ``key`` (the job's signature and the
    row's provenance: code, libraries, weights, dtype, device); a row saved under another is discarded."""

    def __init__(self, folder: str | Path, key: str) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.key = key

    def _path(self, item: dict[str, Any]) -> Path:
        return self.folder / f"{int(item['index']):06d}.json"

    def load(self, item: dict[str, Any]) -> dict[str, Any] | None:
        path = self._path(item)
        if not path.is_file():
            return None
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("key") != self.key or saved["row"]["id"] != item["id"]:
            log.info("%s: saved under other settings or code; recomputed", path.name)
            return None
        return saved["row"]

    def save(self, item: dict[str, Any], row: dict[str, Any]) -> None:
        from .download import atomic_write_text

        # json keeps NaN and every float's exact repr, so a resumed row equals the one computed
        atomic_write_text(self._path(item), json.dumps({"key": self.key, "row": row}))


def run_shard(model: DiffusionModel, job: InvertJob, items: Iterable[dict[str, Any]], *, images_dir: str | Path,
              perceptual: Perceptual | None = None, recon_dir: str | Path | None = None,
              checkpoint: str | Path | None = None, code: str = "", weights_sha256: str = "") -> list[dict[str, Any]]:
    """Rows for the manifest ``items`` (dicts with ``index, id, file, caption, status``), in their order,
    with every setting from ``job``.

    Images whose manifest index is below ``job.qualitative`` keep their reconstruction as
    ``recon_dir/<id>.png`` (and, with ``job.save_latents``, their latents as ``<id>.safetensors``).
    ``checkpoint``: a folder where each finished image is recorded; a rerun after an interruption takes
    those rows (and files) from it instead of recomputing them, if they were made under the same job
    signature and provenance. The caller removes it once the shard's rows are safely written.
    ``code`` and ``weights_sha256`` go into every row's provenance (see :data:`PROVENANCE`).

    ``job.batch_size`` images are inverted together (:func:`diffinv.roundtrip.round_trip`): on the
    analytic model a row equals its batch-1 row bit for bit; a UNet's batched convolutions sum in another
    order (about 1e-6 in float32). NFE is the counter's, which every call of the batch advances once;
    seconds are the batch's divided by its images; ``batch_size`` says how many shared them and
    ``batch_id`` (the manifest index of the batch's first image) which rows share one timing.
    """
    if job.batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {job.batch_size}")
    if bool(job.lpips) != (perceptual is not None):
        raise ValueError(f"the job scores LPIPS {list(job.lpips)}, but perceptual is {perceptual!r}")
    columns = row_columns(job.lpips)
    provenance = origin(model, job.model, code=code, weights_sha256=weights_sha256)
    peak = Peak(model.device)
    saved = None
    if checkpoint is not None:
        saved = Checkpoint(checkpoint, json.dumps({"job": job.signature, "origin": provenance}, sort_keys=True))
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
            log.info("%s %s: resumed (%s)", job.run.name, item["id"], previous["status"])
    warmed = False
    for first in range(0, len(pending), job.batch_size):
        group = pending[first:first + job.batch_size]
        outcomes = _invert_group(model, job, [items[p] for p in group], images_dir=images_dir,
                                 perceptual=perceptual, peak=peak, warm_up=not warmed, files=artefacts)
        for position, outcome in zip(group, outcomes):
            item = items[position]
            row = dict.fromkeys(columns, math.nan)
            row.update(dataset=job.dataset, index=item["index"], id=item["id"], peak_mem_kind=peak.kind,
                       **job.run.as_dict(), **outcome, **provenance)
            rows[position] = row
            if saved is not None:
                saved.save(item, row)
            log.info("%s %s: %s", job.run.name, item["id"], row["status"] if row["status"] != "ok" else
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
    return image, caption if prompt == "caption" else "", encode(model, image)


def _error(exc: BaseException) -> dict[str, Any]:
    return {"status": f"error: {exc}".replace("\n", " ")}


def _invert_group(model: DiffusionModel, job: InvertJob, items: Sequence[dict[str, Any]], *,
                  images_dir: str | Path, perceptual: Perceptual | None, peak: Peak, warm_up: bool,
                  files: str | Path | None) -> list[dict[str, Any]]:
    """One outcome per item: its measurements with ``status: ok``, or ``status: error: <reason>``;
    the kept reconstructions (and latents) are saved in ``files``."""
    outcomes: list[dict[str, Any]] = [{} for _ in items]
    ready = []
    for j, item in enumerate(items):
        try:
            ready.append((j, *_prepare(model, item, images_dir, job.model.resolution, job.prompt)))
        except Exception as exc:  # one bad image is one error row; the shard goes on
            log.error("%s %s: %s", job.run.name, item["id"], exc)
            outcomes[j] = _error(exc)
    if not ready:
        return outcomes
    failure = None
    try:
        _, images, prompts, latents = zip(*ready)
        measured = round_trip(model, job.run, images, prompts, latents=latents, perceptual=perceptual, peak=peak,
                              warm_up=warm_up, batch_id=items[ready[0][0]]["index"], quantize=job.quantize)
    except Exception as exc:
        failure = _error(exc)  # keep the reason only: the traceback would hold the batch's tensors
    if failure is not None and len(ready) == 1:
        measured = [failure]
    elif failure is not None:  # e.g. out of memory: each image alone, so a failure is charged to its image
        log.warning("%s: a batch of %d failed (%s); inverting its images one at a time", job.run.name, len(ready),
                    failure["status"][len("error: "):])
        return [outcomes[j] or _invert_group(model, job, [item], images_dir=images_dir, perceptual=perceptual,
                                             peak=peak, warm_up=False, files=files)[0]
                for j, item in enumerate(items)]
    for (j, *_), outcome in zip(ready, measured):
        item = items[j]
        recon, latents = outcome.pop("recon", None), outcome.pop("latents", None)
        if outcome["status"] != "ok":
            log.error("%s %s: %s", job.run.name, item["id"], outcome["status"])
        if recon is not None and files is not None and int(item["index"]) < job.qualitative:
            save_image(recon, Path(files) / f"{item['id']}.png")
        if latents is not None and files is not None and job.save_latents:
            from safetensors.torch import save_file

            save_file(latents, str(Path(files) / f"{item['id']}.safetensors"))
        outcomes[j] = outcome
    return outcomes


def error_statistics(model: DiffusionModel, job: ErrorStatsJob, items: Sequence[dict[str, Any]], *,
                     images_dir: str | Path) -> list[dict[str, Any]]:
    """Figure 2 rows (``diffinv.stats.fixed_point_errors``) on the first ``job.images`` usable items, one
    image at a time; an unusable image is logged and skipped (its error row is in the invert results)."""
    from .stats import fixed_point_errors

    run, rows = job.run, []
    for item in items[: job.images]:
        try:
            _, text, z0 = _prepare(model, item, images_dir, job.model.resolution, job.prompt)
        except ValueError as exc:
            log.warning("%s %s skipped: %s", run.name, item["id"], exc)
            continue
        result = invert(run.method, model, z0, text, num_steps=run.num_steps, guidance=run.guidance, trajectory=True,
                        **run.params)
        for r in fixed_point_errors(model, result, text, tol=job.tol, max_iter=job.max_iter):
            r.pop("image")  # always 0: one image per call
            rows.append({"run": run.name, "method": run.method, "id": item["id"], **r})
    return rows
