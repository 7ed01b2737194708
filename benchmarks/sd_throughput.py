"""Seconds per call of Stable Diffusion v1.4's networks on this machine, saved for pricing presets.

The real SD v1.4 architecture (UNet, VAE, CLIP text encoder from the published configs) with random
weights, built on the device: nothing is downloaded, and the cost does not depend on the weights
(see ``diffinv.throughput``). For each dtype and batch size B it times, after a warm-up, the median of
``--repeats`` calls of

- the UNet on (B, 4, 64, 64) latents and (B, 77, 768) text embeddings: seconds per call, per
  image-pass (= per call / B) and the TFLOP/s that achieves (FLOPs of one pass counted at batch 1);
- the VAE encoder and decoder at 512 px, per image, and the text encoder, per prompt, at batch B;

prints a table with each figure's gain over the smallest batch, and merges the entries into
``--out`` under this device's name (GPU name, or CPU model and thread count), dtype and batch size.
Other code reads them with ``diffinv.throughput.lookup``.

    .venv/bin/python benchmarks/sd_throughput.py [--device cpu|cuda] [--dtypes float32 bfloat16]
        [--batches 1 2] [--repeats R] [--channels-last] [--compile] [--quick] [--out FILE] [--tiny]

On a borrowed GPU, from a clone of the repository with its venv (``make setup``), one call measures float32, float16 and bfloat16 at batches
1 to 32 and adds that GPU to the checked-in file next to the figures already there:

    .venv/bin/python benchmarks/sd_throughput.py --device cuda

(``--quick``: batches 1, 8 and 32, three repeats, no compile; under 3 minutes on an H100/H200-class
GPU.) Commit ``benchmarks/results/sd_throughput.json`` afterwards. A batch size that runs out of GPU
memory is reported as such and ends that dtype's sweep. ``--tiny`` times the tiny random model of
``diffinv.testing`` instead (plumbing tests; its figures mean nothing about SD).
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import torch

from diffinv.throughput import (MODEL_SD_V1_4, MODEL_TINY, add_entry, build_sd_v1_4, check_compatible, device_name,
                                load_parts, measure, new_results, read_results, resolution, unet_flops_per_pass,
                                write_results)

REPOSITORY = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path("benchmarks/results/sd_throughput.json")  # relative to the repository
DTYPES = {"cpu": ["float32", "bfloat16"], "cuda": ["float32", "float16", "bfloat16"]}
BATCHES = {"cpu": [1, 2], "cuda": [1, 2, 4, 8, 16, 32]}
REPEATS = {"cpu": 2, "cuda": 10}
# --quick: three batch sizes still show where batching stops paying; compiling (minutes per shape) is out
QUICK_BATCHES = {"cpu": [1], "cuda": [1, 8, 32]}
QUICK_REPEATS = {"cpu": 1, "cuda": 3}
COLUMNS = ("dtype", "batch", "UNet s/call", "s/pass", "gain", "TFLOP/s", "enc s/img", "gain", "dec s/img", "gain",
           "text s/prompt", "gain")
WIDTHS = (9, 5, 11, 9, 5, 8, 9, 5, 9, 5, 13, 5)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", choices=["float32", "float16", "bfloat16"],
                        help="default: float32 bfloat16 on CPU; float32 float16 bfloat16 on CUDA")
    parser.add_argument("--batches", nargs="+", type=int,
                        help="default: 1 2 on CPU; 1 2 4 8 16 32 on CUDA (--quick: 1 on CPU, 1 8 32 on CUDA)")
    parser.add_argument("--repeats", type=int, help="timed calls per figure, the median counts "
                        "(default: 2 on CPU, 10 on CUDA; --quick: 1 and 3)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--channels-last", action="store_true", help="UNet, VAE and their inputs channels-last")
    parser.add_argument("--compile", action="store_true", help="time torch.compile(unet); compiles once per shape")
    parser.add_argument("--quick", action="store_true", help="fewer batch sizes and repeats")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"results JSON, merged into if present; relative to the repository (default {DEFAULT_OUT})")
    parser.add_argument("--tiny", action="store_true",
                        help="the tiny random model of diffinv.testing instead of SD v1.4 (for tests)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.quick and args.compile:
        parser.error("--quick leaves out --compile: compiling takes minutes per batch size")
    if args.repeats is not None and args.repeats < 1 or args.batches and min(args.batches) < 1:
        parser.error("--repeats and --batches must be at least 1")
    return args


def row(values: list) -> str:
    return " ".join(f"{v:>{w}}" for v, w in zip(values, WIDTHS))


def table_row(dtype: str, batch: int, entry: dict, base: dict) -> str:
    def gain(key: str) -> str:
        return f"{base[key] / entry[key]:.2f}"

    return row([dtype, batch, f"{entry['unet_seconds_per_call']:.4f}", f"{entry['unet_seconds_per_pass']:.4f}",
                gain("unet_seconds_per_pass"), f"{entry['unet_tflops']:.3f}",
                f"{entry['vae_encode_seconds']:.4f}", gain("vae_encode_seconds"),
                f"{entry['vae_decode_seconds']:.4f}", gain("vae_decode_seconds"),
                f"{entry['text_encoder_seconds']:.4f}", gain("text_encoder_seconds")])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = args.dtypes or DTYPES[device.type]
    batches = sorted(set(args.batches or (QUICK_BATCHES if args.quick else BATCHES)[device.type]))
    repeats = args.repeats or (QUICK_REPEATS if args.quick else REPEATS)[device.type]
    warmup = 2 if args.compile else 1  # with compile the first call compiles
    out = args.out if args.out.is_absolute() else REPOSITORY / args.out
    name = device_name(device)

    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            from diffinv.testing import write_tiny_stable_diffusion

            folder = write_tiny_stable_diffusion(Path(tmp) / "tiny-sd")
            model = MODEL_TINY
        else:
            model = MODEL_SD_V1_4

        def build(dtype: torch.dtype):
            if args.tiny:
                return load_parts(folder, dtype, device, channels_last=args.channels_last)
            return build_sd_v1_4(dtype, device, channels_last=args.channels_last)

        print(f"{model}\ndevice {name}, torch {torch.__version__}, median of {repeats} after {warmup} warm-up, "
              f"channels_last {args.channels_last}, compile {args.compile}")
        flops = None
        for dtype_name in dtypes:
            parts = build(getattr(torch, dtype_name))
            if flops is None:  # a property of the architecture: counted once, checked against the file first
                flops = unet_flops_per_pass(parts[0], parts[2].config.max_position_embeddings)
                side = resolution(parts[1])
                if out.exists():
                    check_compatible(read_results(out), new_results(model, side, flops))
                print(f"UNet: {flops / 1e9:.2f} GFLOP per pass at {side} px\n")
                print(row(list(COLUMNS)))
            base = None
            for batch in batches:
                try:
                    entry = measure(*parts, batch, repeats=repeats, warmup=warmup, flops_per_pass=flops,
                                    compile=args.compile)
                except torch.cuda.OutOfMemoryError as exc:
                    print(f"{dtype_name} batch {batch}: out of GPU memory on {name} "
                          f"({str(exc).splitlines()[0]}); larger batches not tried")
                    break  # the memory is released with the models below
                base = base or entry
                results = new_results(model, side, flops)
                add_entry(results, name, dtype_name, batch, entry)
                write_results(out, results)  # after every batch: a run cut short keeps what it measured
                print(table_row(dtype_name, batch, entry, base), flush=True)
            del parts
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    shown = out.relative_to(REPOSITORY) if out.is_relative_to(REPOSITORY) else out
    print(f"\ngain: per-image speed over batch {batches[0]}; written to {shown}; "
          f"{time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
