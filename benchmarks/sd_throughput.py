"""Seconds per call of Stable Diffusion v1.4's networks on this machine, saved for pricing presets.

The real SD v1.4 architecture (UNet, VAE, CLIP text encoder from the published configs) with random
weights, built on the device: nothing is downloaded, and the cost does not depend on the weights
(see "the measurement" below). For each dtype and batch size B it times, after a warm-up, the median of
``--repeats`` calls of

- the UNet on (B, 4, 64, 64) latents and (B, 77, 768) text embeddings: seconds per call, per
  image-pass (= per call / B) and the TFLOP/s that achieves (FLOPs of one pass counted at batch 1);
- the VAE encoder and decoder at 512 px, per image, and the text encoder, per prompt, at batch B;

prints a table with each figure's gain over the smallest batch, and merges the entries into
``--out`` under this device's name (GPU name, or CPU model and thread count), dtype and batch size.
Other code reads them with ``diffinv.workflow.throughput.lookup``.

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
import copy
import gc
import json
import os
import statistics
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import torch

from diffinv.workflow.throughput import device_name, dtype_name, read_results

# ---------------------------------------------------------------- the measurement
# What a Stable Diffusion v1.4 network call costs on a device: seconds, FLOPs, TFLOP/s.
#
# The three networks are built from SD v1.4's published configs with **random weights**: the cost of a
# call depends on the architecture, dtype, device and batch, not on the weights, so nothing is
# downloaded. Figures go to a JSON file keyed device name -> dtype -> batch size, which other code
# reads back with :func:`lookup` to price a preset on a device it has measured.
#
# Configs: Hugging Face ``CompVis/stable-diffusion-v1-4``, files ``unet/config.json``,
# ``vae/config.json`` and ``text_encoder/config.json``. Checked against
#
# - public copies of those files: the v1.4 repository's Flax-era configs mirrored on GitHub
#   (``wswplay/stable-diffusion-v1-4``), and files that diffusers/transformers re-saved from CompVis v1.4
#   snapshots, on Hugging Face: ``unet/config.json`` (``YaYaB/sd-onepiece-diffusers4``,
#   ``lansinuote/diffsion_from_scratch.params``), ``vae/config.json`` and ``text_encoder/config.json``
#   from the 133a221 snapshot (``preetham/doggs``, ``jlbaker361/ddpogan_512_baroque_40_0_20_increasing``):
#   every value below agrees;
# - the defaults of the installed diffusers and transformers for the keys the files leave out
#   (``mid_block_type``, ``use_linear_projection``, ``upcast_attention``, ``only_cross_attention`` ...;
#   the VAE's ``scaling_factor``): they are SD 1.x's own, and the re-saved copies carry the same values;
# - the parameter counts of the published weights, 859,520,964 (UNet), 83,653,863 (VAE) and
#   123,060,480 (CLIP ViT-L/14 text tower), as noted in DeepSpeed-MII's README (the UNet's also in the
#   example of diffusers' ``ModelMixin.num_parameters``, for v1.5's identical UNet): the builds here have
#   exactly these (tests/test_throughput.py).
#
# ``projection_dim`` is left out: the mirrored v1.4 file has none, and copies re-saved from the 133a221
# snapshot show transformers' default, 512 (ViT-L/14's own is 768). :class:`~transformers.CLIPTextModel`
# has no projection layer, so it changes no cost.

MODEL_SD_V1_4 = "CompVis/stable-diffusion-v1-4 architecture (published configs, random weights)"
MODEL_TINY = "diffinv.testing tiny Stable Diffusion (random weights)"

# CompVis/stable-diffusion-v1-4 unet/config.json (UNet2DConditionModel).
SD_V1_4_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "act_fn": "silu",
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
}

# CompVis/stable-diffusion-v1-4 vae/config.json (AutoencoderKL); scaling_factor is diffusers' default,
# SD 1.x's 0.18215, written out because the latents' scale is part of the model.
SD_V1_4_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

# CompVis/stable-diffusion-v1-4 text_encoder/config.json (CLIPTextModel, the ViT-L/14 text tower),
# token ids as published (they only choose the pooled position, which SD does not use).
SD_V1_4_TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}

TIMESTEP = 500  # any timestep costs the same; fixed so every call is the same call

# PyTorch's FLOP counter has formulas for the CUDA attention kernels but not for the CPU one, so on
# CPU it would count every attention as 0 FLOPs; the CPU kernel gets the same formula here.
_SDPA_KERNELS_WITHOUT_FORMULA = [torch.ops.aten._scaled_dot_product_flash_attention_for_cpu]


# --- building ---------------------------------------------------------------------------------

def build_sd_v1_4(dtype: torch.dtype, device: str | torch.device, *, channels_last: bool = False,
                  seed: int = 0) -> tuple[Any, Any, Any]:
    """(unet, vae, text_encoder) of SD v1.4's architecture with random weights, ready to time.

    The parameters are created on ``device`` in ``dtype`` directly (the float32 UNet is ~3.4 GB);
    ``device="meta"`` builds the architecture without memory, e.g. to count parameters.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # created in the dtype: no float32 copy to cast
    try:
        with torch.device(device):
            unet = UNet2DConditionModel(**SD_V1_4_UNET_CONFIG)
            vae = AutoencoderKL(**SD_V1_4_VAE_CONFIG)
            text_encoder = CLIPTextModel(CLIPTextConfig(**SD_V1_4_TEXT_ENCODER_CONFIG, attn_implementation="sdpa"))
    finally:
        torch.set_default_dtype(default_dtype)
    return prepare(unet, vae, text_encoder, dtype, device, channels_last=channels_last)


def load_parts(folder: str | os.PathLike, dtype: torch.dtype, device: str | torch.device, *,
               channels_last: bool = False) -> tuple[Any, Any, Any]:
    """(unet, vae, text_encoder) from a diffusers-layout folder, e.g. ``write_tiny_stable_diffusion``'s, through the
    library's one loader (:func:`diffinv.models.load`)."""
    from diffinv.models import load

    model = load("stable_diffusion", folder, device=device, dtype=dtype, local_files_only=True)
    return prepare(model.unet, model.vae, model.text_encoder, dtype, device, channels_last=channels_last)


def prepare(unet: Any, vae: Any, text_encoder: Any, dtype: torch.dtype, device: str | torch.device, *,
            channels_last: bool = False) -> tuple[Any, Any, Any]:
    """Move and cast, eval mode, no gradients, attention through PyTorch's scaled-dot-product attention."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    parts = (unet, vae, text_encoder)
    for part in parts:
        part.to(device).eval().requires_grad_(False)
        if part.dtype != dtype:  # only then: diffusers warns about any cast with to()
            part.to(dtype)
    for part in (unet, vae):
        # diffusers' default on torch 2, set explicitly so that a changed default cannot change the timing
        part.set_attn_processor(AttnProcessor2_0())
        other = {type(p).__name__ for p in part.attn_processors.values()} - {"AttnProcessor2_0"}
        if other:
            raise RuntimeError(f"{type(part).__name__} attention is not SDPA: {sorted(other)}")
        if channels_last:
            part.to(memory_format=torch.channels_last)
    if text_encoder.config._attn_implementation != "sdpa":
        raise RuntimeError(f"text encoder attention is {text_encoder.config._attn_implementation!r}, not sdpa")
    return parts


# --- inputs and FLOPs -------------------------------------------------------------------------

def resolution(vae: Any) -> int:
    """The image side the VAE is built for (512 px for SD v1.4)."""
    return int(vae.config.sample_size)


def _memory_format(module: Any) -> torch.memory_format:
    weight = next(p for p in module.parameters() if p.ndim == 4)
    channels_last = weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


def unet_inputs(unet: Any, batch_size: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random latents (B, C, H, W), the fixed timestep and random text embeddings (B, tokens, D)."""
    device, dtype, size = unet.device, unet.dtype, unet.config.sample_size
    latents = torch.randn(batch_size, unet.config.in_channels, size, size, device=device, dtype=dtype)
    embeddings = torch.randn(batch_size, tokens, unet.config.cross_attention_dim, device=device, dtype=dtype)
    timestep = torch.tensor(TIMESTEP, device=device)
    return latents.contiguous(memory_format=_memory_format(unet)), timestep, embeddings


def unet_flops_per_pass(unet: Any, tokens: int) -> int:
    """FLOPs of one UNet pass at batch 1 (multiply-add = 2), by ``torch.utils.flop_counter``.

    Counts convolutions, matmuls and attention; the cheap elementwise ops and norms are not counted.
    """
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query, key, value)

    latents, timestep, embeddings = unet_inputs(unet, 1, tokens)
    with torch.no_grad(), FlopCounterMode(display=False,
                                          custom_mapping={k: sdpa for k in _SDPA_KERNELS_WITHOUT_FORMULA}) as counter:
        unet(latents, timestep, encoder_hidden_states=embeddings)
    return int(counter.get_total_flops())


# --- timing -----------------------------------------------------------------------------------

def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(call: Callable[[], Any], device: torch.device, *, warmup: int, repeats: int) -> float:
    """Median wall-clock seconds of ``call`` over ``repeats`` runs after ``warmup`` untimed ones."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, not {repeats}")
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        call()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _finite(output: torch.Tensor, what: str) -> None:
    # Random weights must not drive activations to inf/NaN: such values can take other code paths
    # (and on CPU subnormals are many times slower), so the time would not be SD's.
    if not torch.isfinite(output).all():
        raise FloatingPointError(f"{what} gave non-finite values with random weights; its timing would mislead")


def measure(unet: Any, vae: Any, text_encoder: Any, batch_size: int, *, repeats: int, warmup: int = 1,
            flops_per_pass: int | None = None, compile: bool = False) -> dict[str, Any]:
    """One batch size: seconds per UNet call and per image-pass, VAE encode/decode per image at the
    VAE's resolution, text encoder per prompt, all at ``batch_size`` (the JSON entry of that batch).

    ``compile`` times ``torch.compile(unet)`` (static shapes; the warm-up calls compile it).
    """
    if warmup < 1:
        raise ValueError(f"warmup must be at least 1 (the first call also checks the output), not {warmup}")
    device, dtype = unet.device, unet.dtype
    tokens = text_encoder.config.max_position_embeddings
    side = resolution(vae)
    latent_side = side // 2 ** (len(vae.config.block_out_channels) - 1)
    latents, timestep, embeddings = unet_inputs(unet, batch_size, tokens)
    images = torch.rand(batch_size, vae.config.in_channels, side, side, device=device, dtype=dtype) * 2 - 1
    images = images.contiguous(memory_format=_memory_format(vae))
    vae_latents = torch.randn(batch_size, vae.config.latent_channels, latent_side, latent_side, device=device,
                              dtype=dtype).contiguous(memory_format=_memory_format(vae))
    ids = torch.randint(0, text_encoder.config.vocab_size, (batch_size, tokens), device=device)
    network = torch.compile(unet, dynamic=False) if compile else unet
    calls = {  # name -> (the call, its output tensor)
        "unet": (lambda: network(latents, timestep, encoder_hidden_states=embeddings), lambda out: out.sample),
        "vae_encode": (lambda: vae.encode(images), lambda out: out.latent_dist.mean),
        "vae_decode": (lambda: vae.decode(vae_latents), lambda out: out.sample),
        "text_encoder": (lambda: text_encoder(ids), lambda out: out.last_hidden_state),
    }
    seconds = {}
    with torch.no_grad():
        for name, (call, output) in calls.items():
            _finite(output(call()), name)  # the first warm-up call
            seconds[name] = seconds_per_call(call, device, warmup=warmup - 1, repeats=repeats)

    entry: dict[str, Any] = {
        "unet_seconds_per_call": seconds["unet"],
        "unet_seconds_per_pass": seconds["unet"] / batch_size,
        "unet_tflops": None if flops_per_pass is None else flops_per_pass * batch_size / seconds["unet"] / 1e12,
        "vae_encode_seconds": seconds["vae_encode"] / batch_size,
        "vae_decode_seconds": seconds["vae_decode"] / batch_size,
        "text_encoder_seconds": seconds["text_encoder"] / batch_size,
        "channels_last": _memory_format(unet) == torch.channels_last,
        "compile": compile,
        "warmup": warmup,
        "repeats": repeats,
        "torch": torch.__version__,
        "diffusers": metadata.version("diffusers"),
        "transformers": metadata.version("transformers"),
    }
    if device.type == "cuda":  # TF32 changes float32 speed several-fold; record what was allowed
        entry["cuda_tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        entry["cudnn_tf32"] = torch.backends.cudnn.allow_tf32
    return entry


# --- the JSON file ----------------------------------------------------------------------------

def new_results(model: str, resolution: int, unet_flops_per_pass: int) -> dict[str, Any]:
    """An empty results document for one model: add entries with :func:`add_entry`."""
    return {"model": model, "resolution": resolution, "unet_flops_per_pass": unet_flops_per_pass, "devices": {}}


def add_entry(results: dict[str, Any], device: str, dtype: torch.dtype | str, batch_size: int,
              entry: dict[str, Any]) -> None:
    results["devices"].setdefault(device, {}).setdefault(dtype_name(dtype), {})[str(batch_size)] = entry


def check_compatible(old: dict[str, Any], new: dict[str, Any]) -> None:
    """Refuse to mix figures of another model, resolution or FLOP count in one file."""
    for key in ("model", "resolution", "unet_flops_per_pass"):
        if old.get(key) != new.get(key):
            raise ValueError(f"the results file has {key} = {old.get(key)!r}, this run {new.get(key)!r}; "
                             "write to another file")


def merge_results(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``old`` with ``new``'s entries added; an entry of the same device, dtype and batch is replaced."""
    check_compatible(old, new)
    merged = copy.deepcopy(old)
    for device, dtypes in new["devices"].items():
        for dtype, batches in dtypes.items():
            for batch, entry in batches.items():
                add_entry(merged, device, dtype, int(batch), entry)
    return merged


def _ordered(results: dict[str, Any]) -> dict[str, Any]:
    # Batch sizes in numeric order, so that the file reads as a table and diffs stay small
    devices = {device: {dtype: dict(sorted(batches.items(), key=lambda kv: int(kv[0])))
                        for dtype, batches in dtypes.items()}
               for device, dtypes in sorted(results["devices"].items())}
    return {**results, "devices": devices}


def write_results(path: str | os.PathLike, results: dict[str, Any]) -> dict[str, Any]:
    """Merge ``results`` into the file at ``path`` (created if absent) and return what it now holds."""
    path = Path(path)
    merged = merge_results(read_results(path), results) if path.exists() else copy.deepcopy(results)
    merged = _ordered(merged)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(merged, indent=2) + "\n")
    partial.replace(path)  # never a half-written file, even if the run is killed while writing
    return merged



# ---------------------------------------------------------------- the command

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
        for dtype_label in dtypes:
            parts = build(getattr(torch, dtype_label))
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
                    print(f"{dtype_label} batch {batch}: out of GPU memory on {name} "
                          f"({str(exc).splitlines()[0]}); larger batches not tried")
                    break  # the memory is released with the models below
                base = base or entry
                results = new_results(model, side, flops)
                add_entry(results, name, dtype_label, batch, entry)
                write_results(out, results)  # after every batch: a run cut short keeps what it measured
                print(table_row(dtype_label, batch, entry, base), flush=True)
            del parts
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    shown = out.relative_to(REPOSITORY) if out.is_relative_to(REPOSITORY) else out
    print(f"\ngain: per-image speed over batch {batches[0]}; written to {shown}; "
          f"{time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
