"""What glibc malloc's default thresholds cost the demo model's network call, in one run.

Fresh processes (one per measurement, glibc reads its settings once) time calls of the demo's mixture at
its batch (34 images of 64 px, float64, one torch thread, as a workflow job runs them), with malloc as it
comes and after ``diffinv.workflow.allocator.keep_freed_memory()``, which every workflow job calls at its start.
Prints milliseconds per call (wall, user, system) and minor page faults per call, best of ``--repeats``
alternating processes, and the ratio. The mixture is random (16 full-covariance components on 8 x 8 RGB
patches, as the demo's fit): the cost depends on the shapes, not on the fitted values. Every call is at
one level, so the mixture's kept precisions serve them all, in both settings alike.

    flock /tmp/cpu.lock .venv/bin/python benchmarks/allocator.py [--repeats 3] [--calls 30]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from diffinv.workflow.allocator import keep_freed_memory
from diffinv.models import GaussianMixtureDenoiser
tuned = sys.argv[1] == "tuned"
if tuned and not keep_freed_memory():
    raise SystemExit("this C library is not glibc: nothing to compare")
rng = np.random.default_rng(0)
k, d = 16, 192
a = rng.normal(size=(k, d, d)) / d ** 0.5
covariances = a @ a.transpose(0, 2, 1) + 1e-3 * np.eye(d)
model = GaussianMixtureDenoiser(np.full(k, 1 / k), rng.normal(0, 0.3, (k, d)), covariances, patch_size=8)
z = torch.randn(34, 3, 64, 64, dtype=torch.float64)
for _ in range(3):
    model.forward(z, 501, None)
calls = int(sys.argv[2])
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(calls):
    model.forward(z, 501, None)
wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall": wall / calls * 1e3, "user": (r1.ru_utime - r0.ru_utime) / calls * 1e3,
                  "sys": (r1.ru_stime - r0.ru_stime) / calls * 1e3, "faults": (r1.ru_minflt - r0.ru_minflt) / calls}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    best: dict[str, dict[str, float]] = {}
    for _ in range(args.repeats):
        for mode in ("default", "tuned"):
            out = subprocess.run([sys.executable, "-c", CHILD, mode, str(args.calls)], check=True, capture_output=True,
                                 text=True).stdout
            measured = json.loads(out.strip().splitlines()[-1])
            if mode not in best or measured["wall"] < best[mode]["wall"]:
                best[mode] = measured
    print(f"demo mixture, batch 34 x 3 x 64 x 64 float64, one thread; "
          f"best of {args.repeats} processes x {args.calls} calls")
    print(f"{'malloc':<10}{'wall ms':>10}{'user ms':>10}{'sys ms':>10}{'faults':>10}")
    for mode, m in best.items():
        print(f"{mode:<10}{m['wall']:>10.1f}{m['user']:>10.1f}{m['sys']:>10.1f}{m['faults']:>10.0f}")
    print(f"default / tuned wall time: {best['default']['wall'] / best['tuned']['wall']:.2f}x")


if __name__ == "__main__":
    main()
