"""Every method on a small fixed VP problem, reduced to a few numbers per method.

``tests/test_flow.py`` checks that the rectified-flow refactor (issue 15) left these unchanged. The
numbers it holds were made by this file on the tree before the refactor (commit 37d1951):

    git worktree add --detach /tmp/flow-head 37d1951
    PYTHONPATH=/tmp/flow-head/src .venv/bin/python tests/vp_fingerprints.py

It uses only what both trees have: the Gaussian-mixture model, ``invert``, ``reconstruct``, the registry.
"""

from __future__ import annotations

import numpy as np
import torch


def problem(seed: int = 3):
    """A 4-component full-covariance patch mixture (4 x 4 RGB patches) and two 8 x 8 images drawn from it."""
    from diffinv.models import GaussianMixtureDenoiser

    rng = np.random.default_rng(seed)
    k, d = 4, 48
    means = rng.normal(0, 0.5, (k, d))
    factors = rng.normal(0, 1, (k, d, d)) / np.sqrt(d)
    cov = 0.05 * factors @ factors.transpose(0, 2, 1) + 1e-3 * np.eye(d)
    weights = rng.uniform(0.5, 1.5, k)
    model = GaussianMixtureDenoiser(weights / weights.sum(), means, cov, patch_size=4)
    comp = rng.choice(k, 8, p=weights / weights.sum())
    rows = torch.from_numpy(np.stack([rng.multivariate_normal(means[c], cov[c]) for c in comp]))
    images = rows.reshape(2, 2, 2, 3, 4, 4).permute(0, 3, 1, 4, 2, 5).reshape(2, 3, 8, 8)  # patches to images
    return model, images


def _parts(state) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    return [t for part in state for t in _parts(part)]


def fingerprints(num_steps: int = 10, methods=None) -> dict[str, list[float]]:
    """Per method (defaults; IFE also with e_0): sum and sum of squares of every tensor of the inverted
    state, and of the reconstruction, in float64. ``methods``: these only (default: every registered one)."""
    from diffinv import METHODS, invert, reconstruct

    model, x = problem()
    out = {}
    for name, params in [*((name, {}) for name in methods or METHODS), ("ife", {"compute_e0": True})]:
        result = invert(name, model, x, num_steps=num_steps, **params)
        recon = reconstruct(name, model, result)
        key = name + ("_e0" if params else "")
        out[key] = [v for t in [*_parts(result.state), recon] for v in (t.sum().item(), (t * t).sum().item())]
    return out


if __name__ == "__main__":
    for key, values in fingerprints().items():
        print(f"    {key!r}: [{', '.join(repr(v) for v in values)}],")
