"""Command line: ``diffinv invert``, ``diffinv methods``, ``diffinv demo``."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch

from .methods import METHODS, ParamError, get_method


def parse_param(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` as a pair of strings; the method reads VALUE as its parameter's type."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--param takes NAME=VALUE, got {text!r}")
    return name, value


def output_names(paths: Sequence[str], tag: str) -> list[str]:
    """``<name>.<tag>.png`` per input, ``name`` the shortest tail of its path that no other input shares
    (``x`` alone, ``x_png`` beside ``x.jpg``, ``a_x`` beside ``b/x.png``), so no output overwrites another."""
    parts = [Path(os.path.abspath(p)).with_suffix("").parts for p in paths]
    suffixes = [Path(p).suffix.lstrip(".") for p in paths]
    names = []
    for k, path in enumerate(parts):
        for depth in range(1, len(path) + 1):
            name = "_".join(path[-depth:])
            clash = [j for j, other in enumerate(parts) if j != k and "_".join(other[-depth:]) == name]
            if not clash:
                break
            if all(suffixes[j] != suffixes[k] for j in clash):
                name = f"{name}_{suffixes[k]}"
                break
        names.append(f"{name}.{tag}.png")
    if len(set(names)) != len(names):
        raise SystemExit("diffinv: the same input is given twice; each output would be written twice")
    return names


def run_tag(method: str, given: dict[str, Any], steps: int, guidance: float) -> str:
    """The part of an output's name that says how it was made: method, the parameters set, N and w."""
    def text(value: Any) -> str:
        return "-".join(map(str, value)) if isinstance(value, tuple) else str(value).lower()

    tag = [method, *(f"{name}{text(value)}" for name, value in sorted(given.items())), f"N{steps}"]
    return "_".join(tag + ([f"w{guidance:g}"] if guidance != 1 else []))


def writable_folder(folder: Path) -> Path:
    """``folder``, made if missing, refused (SystemExit naming it) unless a file can be written there."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".diffinv-write-test-"):
            pass
    except OSError as exc:
        raise SystemExit(f"diffinv: cannot write reconstructions to {folder}: {exc.strerror or exc}; choose another "
                         "--out") from None
    return folder


def load_model(spec: str, device: str | None, dtype: str | None):
    """``demo`` (the fitted mixture, cached), ``sd-v1-4``, ``ddpm-cifar10``, a diffusers folder (SD, SDXL, SD3,
    FLUX.1 or a pixel-space DDPM/DDIM UNet, told apart by its model_index.json) or a saved mixture (.npz), through
    :func:`diffinv.models.load`."""
    from .models import DDPM_CIFAR10, SD_V1_4, folder_kind, load

    torch_dtype = getattr(torch, dtype) if dtype else None
    if spec == "sd-v1-4":
        return load("stable_diffusion", SD_V1_4, device=device, dtype=torch_dtype)
    if spec == "ddpm-cifar10":
        return load("pixel", DDPM_CIFAR10, device=device, dtype=torch_dtype)
    if spec == "demo":
        from .demo import demo_model

        print("the demo model (fitted once per version, about 40 s, then cached) ...", file=sys.stderr)
        return demo_model(device=device, dtype=torch_dtype)
    path = Path(spec)
    if path.is_dir():
        return load(folder_kind(path), path, device=device, dtype=torch_dtype)
    if path.is_file():
        try:
            return load("gaussian_mixture", path, device=device, dtype=torch_dtype)
        except ValueError as exc:
            raise SystemExit(f"diffinv: --model {spec}: {exc}") from None
    raise SystemExit(f"--model {spec!r}: not 'demo', 'sd-v1-4', 'ddpm-cifar10', a diffusers folder or a saved "
                     "mixture file")


def cmd_methods(args: argparse.Namespace) -> int:
    for name, method in METHODS.items():
        defaults = ", ".join(f"{k}={v}" for k, v in method.defaults.items()) or "-"
        paths = "" if set(method.paths) == {"vp", "flow"} else f"  ({' and '.join(method.paths)} path only)"
        print(f"{name:<10} {defaults}{paths}\n           {method.summary[:200]}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(size=args.size, num_steps=args.steps)
    return 0


def cmd_invert(args: argparse.Namespace) -> int:
    from .api import Run
    from .evaluation.images import load_image, save_image
    from .models import GaussianMixtureDenoiser
    from .evaluation.roundtrip import round_trip

    method = get_method(args.method)
    given = {name: method.parse(name, text) for name, text in args.param}  # typed, before loading anything
    params = method.resolve(given)
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise SystemExit(f"diffinv: no such image file: {', '.join(missing)}")
    names = output_names(args.images, run_tag(args.method, given, args.steps, args.guidance))
    folders = {Path(args.out) if args.out else Path(p).parent for p in args.images}
    for folder in sorted(folders):
        writable_folder(folder)
    run = Run(args.method, params, num_steps=args.steps, guidance=args.guidance)
    model = load_model(args.model, args.device, args.dtype)
    multiple = model.patch_size if isinstance(model, GaussianMixtureDenoiser) and model.patch_size else 8
    multiple = getattr(model, "pixel_multiple", multiple)  # 16 for SD3 and FLUX.1 (VAE 8 x patch 2)
    size = args.size if args.size or isinstance(model, GaussianMixtureDenoiser) else getattr(model, "resolution", 512)
    if size and size % multiple:
        raise SystemExit(f"--size {size} is not a multiple of {multiple}")
    if hasattr(model, "resolution"):
        model.resolution = size  # FLUX.1's schedule depends on the image size
    failures = 0
    print("image\tmethod\tnfe\tmse\tpsnr\tssim\tseconds\treconstruction")
    for path, name in zip(args.images, names):
        try:
            image = load_image(path, size=size, multiple=multiple)
            (m,) = round_trip(model, run, [image], [args.prompt or ""], progress=not args.quiet)
            if m["status"] != "ok":
                raise RuntimeError(m["status"].removeprefix("error: "))
            out = (Path(args.out) if args.out else Path(path).parent) / name
            save_image(m["recon"], out)
            seconds = m["seconds_inversion"] + m["seconds_reconstruction"]  # README, "Metrics": seconds
            print(f"{path}\t{args.method}\t{m['nfe_inversion']}\t{m['mse']:.4e}\t{m['psnr']:.2f}\t{m['ssim']:.4f}\t"
                  f"{seconds:.2f}\t{out}")
        except (ValueError, RuntimeError) as exc:
            failures += 1
            print(f"{path}\t{args.method}\terror: {exc}", file=sys.stderr)
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffinv", description="Diffusion inversion methods (arXiv 2512.08547).")
    sub = parser.add_subparsers(dest="command", required=True)

    inv = sub.add_parser("invert", help="invert and reconstruct images, print PSNR/SSIM, save reconstructions",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    inv.add_argument("images", nargs="+", help="image files (any format PIL reads)")
    inv.add_argument("--method", default="ife", choices=sorted(METHODS), help="inversion method")
    inv.add_argument("--model", default="demo",
                     help="'demo' (analytic mixture fitted to shipped photos), 'sd-v1-4' (Stable Diffusion v1.4 "
                          "at the pinned revision; needs the weights cached or network), 'ddpm-cifar10' (the "
                          "32 px pixel-space DDPM google/ddpm-cifar10-32, likewise), a diffusers folder (SD, "
                          "SDXL, SD3, FLUX.1 or a DDPM/DDIM UNet, told apart by its model_index.json), or a saved "
                          "mixture .npz")
    inv.add_argument("--prompt", default=None, help="caption used in both directions (default: empty prompt)")
    inv.add_argument("--steps", type=int, default=50, help="number of DDIM steps N")
    inv.add_argument("--guidance", type=float, default=1.0,
                     help="classifier-free guidance w in both directions; 1 = one conditional pass")
    inv.add_argument("--param", type=parse_param, action="append", default=[], metavar="NAME=VALUE",
                     help="method parameter, repeatable (see 'diffinv methods'), e.g. --param K=5")
    inv.add_argument("--size", type=int, default=None,
                     help="centre-crop and resize to SIZE x SIZE (default: 512 for SD, 1024 for SDXL, SD3 and "
                          "FLUX.1, a pixel UNet's own sample size; for the mixture, crop to a multiple of its "
                          "patch size)")
    inv.add_argument("--out", default=None, help="folder for reconstructions (default: next to each image)")
    inv.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    inv.add_argument("--dtype", default=None, choices=["float16", "bfloat16", "float32", "float64"],
                     help="compute dtype (default: float16 on CUDA (bfloat16 for FLUX.1) and float32 on CPU for "
                          "the networks; float64 for the mixture)")
    inv.add_argument("--quiet", action="store_true", help="no progress bars")
    inv.set_defaults(func=cmd_invert)

    met = sub.add_parser("methods", help="list the methods with their parameters and defaults")
    met.set_defaults(func=cmd_methods)

    demo = sub.add_parser("demo", help="offline demo on shipped photographs with every method (minutes, CPU)",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo.add_argument("--size", type=int, default=64, help="evaluation image size (multiple of 8)")
    demo.add_argument("--steps", type=int, default=50, help="number of DDIM steps N")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (KeyError, TypeError, ParamError) as exc:
        print(f"diffinv: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
