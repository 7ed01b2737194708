"""Overhead of the 1-NFE methods over their network calls, measured in one run.

Prints, per model, time per image of each method divided by N x (time of one model call): 1.00
means the method costs nothing beyond its N network evaluations. Models: the fitted demo mixture
(64 px photo) and the tiny random-weight UNet (plumbing speed only, not SD's).

    .venv/bin/python benchmarks/overhead.py [--steps 50] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from diffinv import METHODS, invert
from diffinv.workflow.data import load_photo
from diffinv.demo import fit_demo_model
from diffinv.evaluation.images import to_tensor
from diffinv.models import StableDiffusionBackend
from diffinv.schedule import Schedule
from diffinv.testing import write_tiny_stable_diffusion


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def one_nfe_methods(sched: Schedule) -> list[str]:
    return [name for name, m in METHODS.items() if m.nfe(m.resolve({}), sched) == sched.num_steps]


def measure(label: str, model, z0: torch.Tensor, steps: int, repeats: int) -> None:
    sched = model.schedule(steps)
    cond = model.condition(None, z0.shape[0])
    t_mid = sched.timesteps[steps // 2]
    call = best_time(lambda: model.eps(z0, t_mid, cond), repeats * 5)
    print(f"\n{label}: one model call {call * 1e3:.2f} ms")
    print(f"{'method':<12} {'s/image':>9} {'ratio to N calls':>17}")
    for name in one_nfe_methods(sched):
        t = best_time(lambda: invert(name, model, z0, cond, schedule=sched), repeats)
        print(f"{name:<12} {t:>9.4f} {t / (steps * call):>17.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    mixture = fit_demo_model(size=64, n_components=8, max_patches=5000)
    z0 = mixture.encode(to_tensor(load_photo("cat", 64), dtype=torch.float64))
    measure("demo mixture (8 components, 8x8 patches, 64 px, float64)", mixture, z0, args.steps, args.repeats)
    with tempfile.TemporaryDirectory() as folder:
        sd = StableDiffusionBackend.from_pretrained(write_tiny_stable_diffusion(folder), device="cpu",
                                                    dtype=torch.float32)
        z0 = sd.encode(torch.rand(1, 3, 32, 32) * 2 - 1)
        measure("tiny random UNet (latent 4x16x16, float32)", sd, z0, args.steps, args.repeats)


if __name__ == "__main__":
    main()
