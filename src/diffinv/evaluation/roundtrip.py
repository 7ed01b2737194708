"""One round trip of a batch of images: encode, invert, reconstruct, decode, score.

The workflow's shards, ``diffinv invert`` and ``diffinv demo`` all call :func:`round_trip`, so a
number means the same wherever it is printed. Seconds are defined once, here: ``seconds_inversion`` is
the wall time of the method's inversion from the encoded latents to the inverted state, and
``seconds_reconstruction`` that of its reconstruction back to a clean latent, each divided by the
images that shared it. Encoding, decoding and scoring are outside both (the same for every method),
and one untimed warm-up call (``warm_up=True``) keeps a process's one-off costs out.
"""

from __future__ import annotations

import resource
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..api import Run, invert, reconstruct
from .images import to_tensor, to_uint8, to_unit
from .metrics import image_metrics
from ..models.base import DiffusionModel

Perceptual = Callable[[np.ndarray, np.ndarray], dict[str, float]]


class Peak:
    """Peak memory of a batch: the CUDA allocator's peak, or the process's max RSS on a CPU."""

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


def quality(reference: np.ndarray, test: np.ndarray, perceptual: Perceptual | None) -> dict[str, float]:
    """PSNR, SSIM, MSE and (given ``perceptual``) ``lpips_<net>`` of two images (uint8 or float64 in [0, 1])."""
    values = image_metrics(reference, test)
    if perceptual is not None:
        values.update(perceptual(reference, test))
    return values


def _finite_rows(state: Any) -> Tensor:
    """Per image: are all values of the (possibly nested) inverted state finite?"""
    if isinstance(state, Tensor):
        return torch.isfinite(state.flatten(1)).all(1).cpu()
    return torch.stack([_finite_rows(part) for part in state]).all(0)


def encode(model: DiffusionModel, image: np.ndarray) -> Tensor:
    """The clean latent of one uint8 image (float64 input for a float64 model, float32 otherwise)."""
    return model.encode(to_tensor(image, dtype=torch.float64 if model.dtype == torch.float64 else torch.float32))


def round_trip(model: DiffusionModel, run: Run, images: Sequence[np.ndarray], prompts: Sequence[str], *,
               latents: Sequence[Tensor] | None = None, perceptual: Perceptual | None = None,
               peak: Peak | None = None, warm_up: bool = False, batch_id: int = 0, quantize: bool = True,
               progress: bool = False) -> list[dict[str, Any]]:
    """Invert and reconstruct uint8 ``images`` together (one network call per step for all of them).

    Each image is encoded, its prompt embedded, decoded and scored on its own, so nothing of its result
    depends on its neighbours but the network's batched arithmetic. ``latents``: the images' clean
    latents if the caller encoded them already. ``quantize``: score reconstructions as 8-bit images (what
    a saved PNG holds, the papers' protocol), or as the decoder's float output in [0, 1], which keeps the
    metrics finite and ordered below one grey level. Per image a dict: ``status`` (``ok``, or ``error:
    <reason>`` for an image whose inversion or reconstruction is not finite), NFE and seconds of both
    directions, ``batch_size``, ``batch_id``, ``peak_mem_mb``, the metrics against the input and
    (``*_vae``) against the model's own round trip, ``latent_mse``, and the reconstruction (``recon``,
    uint8) and latents (``latents``: ``z0``, ``zN``) of the images that came back. An exception (say,
    out of memory) propagates: the caller decides whether to retry image by image.
    """
    peak = peak or Peak(model.device)
    n = len(images)
    latents = list(latents) if latents is not None else [encode(model, image) for image in images]
    z0 = torch.cat(latents)
    cond = model.condition(list(prompts), n)  # embedded one prompt at a time
    scored = to_uint8 if quantize else to_unit
    roundtrips = None if model.latent_is_image else [scored(model.decode(z))[0] for z in latents]
    if warm_up:  # the first network pass of a process pays one-off costs; keep them out of the timing
        with torch.no_grad():
            model.eps(z0, model.schedule(run.num_steps).timesteps[1], cond, run.guidance)

    peak.reset()
    peak.sync()
    start, nfe0 = time.perf_counter(), model.nfe
    result = invert(run.method, model, z0, cond, num_steps=run.num_steps, guidance=run.guidance, progress=progress,
                    **run.params)
    peak.sync()
    inverted, nfe1 = time.perf_counter(), model.nfe
    z0_hat = reconstruct(run.method, model, result, cond, guidance=run.reconstruction_guidance, progress=progress)
    peak.sync()
    done = time.perf_counter()
    cost = {"nfe_inversion": nfe1 - nfe0, "nfe_reconstruction": model.nfe - nfe1, "batch_size": n, "batch_id": batch_id,
            "seconds_inversion": (inverted - start) / n, "seconds_reconstruction": (done - inverted) / n,
            "peak_mem_mb": peak.read_mb()}
    # an image that diverges is an error; its neighbours are untouched (no operation mixes images)
    finite_state, finite_recon = _finite_rows(result.state), _finite_rows(z0_hat)
    out: list[dict[str, Any]] = []
    for b in range(n):
        if not finite_state[b] or not finite_recon[b]:
            reason = "non-finite inverted latent" if not finite_state[b] else "non-finite reconstruction"
            out.append({"status": f"error: {reason}"})
            continue
        decoded = model.decode(z0_hat[b:b + 1])
        recon = scored(decoded)[0]
        values: dict[str, Any] = {"status": "ok", **cost,
                                  "latent_mse": float(((z0_hat[b:b + 1].double() - latents[b].double()) ** 2).mean())}
        scores = quality(images[b], recon, perceptual)
        # the analytic model's round trip is its input (to float64 rounding): scoring it again repeats LPIPS
        own = scores if roundtrips is None else quality(roundtrips[b], recon, perceptual)
        values.update(scores)
        values.update({f"{k}_vae": v for k, v in own.items()})
        values["recon"] = recon if quantize else to_uint8(decoded)[0]
        values["latents"] = {"z0": latents[b].cpu().contiguous(), "zN": result.latent[b:b + 1].cpu().contiguous()}
        out.append(values)
    return out
