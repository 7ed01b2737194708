"""Throughput of batched inversion and the cost of reduced precision, measured in one run.

For each model, the same images go through ``run_shard`` (the workflow's own path: load, encode,
invert, reconstruct, decode, score) at batch sizes 1, 2, 4 and 8. Printed per batch size:

- images/s of the network part (inversion + reconstruction seconds from the rows), and its ratio to
  batch 1;
- images/s of the whole shard (wall clock, with image loading and metrics), and its ratio.

Then the same at reduced precision (bfloat16 on CPU, float16 on CUDA) at the largest batch, with its
effect on reconstruction: the mean PSNR against the originals at both precisions, and the PSNR of
the reduced-precision reconstruction against the full-precision one.

Every number is the fastest of ``--repeats`` passes, at one torch thread by default (as the workflow's
jobs run). Models: the demo preset's fitted mixture (float64, 64 px) and the tiny random-weight UNet
(float32, 32 px images, 16 x 16 latents): plumbing speed only, nothing about Stable Diffusion.

    .venv/bin/python benchmarks/batch.py [--method ddim] [--steps 50] [--batches 1 2 4 8] [--device cpu]
                                         [--reduced bfloat16|float16]

The workflow's own switch for reduced precision is ``model.dtype`` in the config.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffinv.api import Run
from diffinv.workflow.data import DEMO_EVAL, DEMO_FIT, load_photo
from diffinv.demo import fit_demo_model
from diffinv.evaluation.images import load_image
from diffinv.evaluation.metrics import image_metrics
from diffinv.models import GaussianMixtureDenoiser, StableDiffusionBackend
from diffinv.testing import shard_rows, write_tiny_stable_diffusion

MIXTURE_SIZE, UNET_SIZE = 64, 32  # the demo's resolution; a 16 x 16 latent keeps the tiny UNet quick
PHOTOS = DEMO_EVAL + DEMO_FIT[:4]  # eight images


def write_images(folder: Path) -> list[dict]:
    items = []
    for index, name in enumerate(PHOTOS):
        Image.fromarray(load_photo(name, MIXTURE_SIZE)).save(folder / f"{name}.png")
        items.append({"index": index, "id": name, "file": f"{name}.png", "caption": f"a photograph of {name}",
                      "status": "ok"})
    return items


def shard(model, run: Run, items: list[dict], folder: Path, size: int, batch: int, repeats: int = 1,
          recon: Path | None = None) -> dict:
    """Images per second, the best of ``repeats`` passes, and the mean PSNR to the originals."""
    network = whole = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        rows = shard_rows(model, run, items, images_dir=folder, resolution=size, dataset="bench", batch_size=batch,
                         qualitative=len(items) if recon else 0, recon_dir=recon)
        wall = time.perf_counter() - start
        bad = [f"{r['id']}: {r['status']}" for r in rows if r["status"] != "ok"]
        if bad:
            raise SystemExit(f"batch {batch}: " + "; ".join(bad))
        network = max(network, len(rows) / sum(r["seconds_inversion"] + r["seconds_reconstruction"] for r in rows))
        whole = max(whole, len(rows) / wall)
    return {"network": network, "shard": whole, "psnr": float(np.mean([r["psnr"] for r in rows]))}


def throughput(label: str, model, run: Run, items: list[dict], folder: Path, size: int, batches: list[int],
               repeats: int) -> None:
    print(f"\n{label}: {run.method}, N = {run.num_steps}, {len(items)} images of {size} px, best of {repeats}")
    print(f"{'batch':>5} {'network img/s':>14} {'ratio':>6} {'shard img/s':>12} {'ratio':>6}")
    shard(model, run, items[:1], folder, size, 1)  # one-off costs (first calls, lazy imports) out of the timing
    base = None
    for batch in batches:
        m = shard(model, run, items, folder, size, batch, repeats)
        base = base or m
        print(f"{batch:>5} {m['network']:>14.3f} {m['network'] / base['network']:>6.2f} {m['shard']:>12.3f} "
              f"{m['shard'] / base['shard']:>6.2f}")


def precision(label: str, full, reduced, run: Run, items: list[dict], folder: Path, size: int, batch: int,
              repeats: int) -> None:
    shard(reduced, run, items[:1], folder, size, 1)
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        hi = shard(full, run, items, folder, size, batch, repeats, Path(a))
        lo = shard(reduced, run, items, folder, size, batch, repeats, Path(b))
        agreement = [image_metrics(load_image(Path(a) / f"{i['id']}.png"), load_image(Path(b) / f"{i['id']}.png"))
                     ["psnr"] for i in items]
    print(f"\n{label} at batch {batch}: {str(full.dtype)[6:]} -> {str(reduced.dtype)[6:]}")
    print(f"  network img/s {hi['network']:.3f} -> {lo['network']:.3f} (ratio {lo['network'] / hi['network']:.2f})")
    print(f"  PSNR to the originals {hi['psnr']:.2f} -> {lo['psnr']:.2f} dB ({lo['psnr'] - hi['psnr']:+.2f} dB); "
          f"PSNR of the {str(reduced.dtype)[6:]} reconstructions to the {str(full.dtype)[6:]} ones: "
          f"{np.mean(agreement):.2f} dB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="ddim")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--repeats", type=int, default=3, help="passes per setting; the fastest counts")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: the workflow runs one thread per job)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reduced", choices=["bfloat16", "float16"], default=None,
                        help="reduced precision to compare (default: float16 on CUDA, bfloat16 on CPU)")
    args = parser.parse_args()
    device = torch.device(args.device)
    low = getattr(torch, args.reduced or ("float16" if device.type == "cuda" else "bfloat16"))
    run = Run(args.method, num_steps=args.steps)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        items = write_images(folder)

        mixture = fit_demo_model()  # the demo preset's fit: 16 components, 8 x 8 patches
        mixture = GaussianMixtureDenoiser(mixture.weights, mixture.means, mixture.covariances, patch_size=8,
                                          device=device)
        label = "demo mixture (float64)"
        throughput(label, mixture, run, items, folder, MIXTURE_SIZE, args.batches, args.repeats)
        reduced = GaussianMixtureDenoiser(mixture.weights, mixture.means, mixture.covariances, patch_size=8,
                                          device=device, dtype=low)
        precision(label, mixture, reduced, run, items, folder, MIXTURE_SIZE, max(args.batches), args.repeats)

        sd_folder = write_tiny_stable_diffusion(folder / "tiny-sd")
        unet = StableDiffusionBackend.from_pretrained(sd_folder, device=device, dtype=torch.float32)
        label = "tiny random UNet (float32)"
        throughput(label, unet, run, items, folder, UNET_SIZE, args.batches, args.repeats)
        reduced = StableDiffusionBackend.from_pretrained(sd_folder, device=device, dtype=low)
        precision(label, unet, reduced, run, items, folder, UNET_SIZE, max(args.batches), args.repeats)


if __name__ == "__main__":
    main()
