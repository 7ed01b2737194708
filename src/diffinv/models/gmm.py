"""An analytic model: the exact MMSE noise prediction of a Gaussian-mixture prior.

Prior ``x ~ sum_k pi_k N(mu_k, Sigma_k)`` and ``z = a x + s n``. Then ``z | k ~ N(a mu_k, C_k)`` with
``C_k = a^2 Sigma_k + s^2 I``, and since ``Cov(n, z | k) = s I`` the posterior mean of the noise is

    eps(z) = E[n | z] = sum_k r_k(z) * s * C_k^{-1} (z - a mu_k),

with ``r_k`` the responsibilities under ``N(a mu_k, C_k)``. Each ``Sigma_k = U_k diag(lam_k) U_k^T`` is
diagonalised once, so ``C_k`` is diagonal in the same basis at every noise level. With a patch size
p the prior applies independently to non-overlapping p x p patches, so one mixture serves images of
any size divisible by p; the latent is the image itself in [-1, 1].

Nothing above needs ``a^2 + s^2 = 1``, so the same fitted mixture runs on either path, chosen by its
scheduler config: a DDIM-style config (default: Stable Diffusion's) makes it an epsilon model on the VP
path, a ``FlowMatchEulerDiscreteScheduler`` config (e.g. SD3's) a rectified-flow model that returns, as
SD3 and FLUX.1 do, the velocity ``v = E[n - x | z]`` at ``sigma = timestep / num_train_timesteps``
(``a = 1 - sigma``, ``s = sigma``), with ``E[x | z] = (z - s E[n | z]) / a`` and, at ``sigma = 1``
where z says nothing about x, the prior mean.
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from ..schedule import STABLE_DIFFUSION_SCHEDULER_CONFIG, is_flow_config
from .base import Conditioning, DiffusionModel, Prompt

COVARIANCE_TYPES = ("spherical", "diag", "full")
PRECISION_CACHE_LEVELS = 4   # a level's precisions: 4.7 MB for the demo's 16 x 192-dim components


class GaussianMixtureDenoiser(DiffusionModel):
    """Exact noise prediction for a Gaussian mixture (weights (K,), means (K, D), covariances).

    ``covariances`` has shape (K,) for isotropic, (K, D) for diagonal and (K, D, D) for full
    components. ``patch_size=None`` treats each sample (any shape) as one D-vector. A flow
    ``scheduler_config`` puts it on the rectified-flow path; ``schedule_options`` are then the keywords
    its schedule is built with (``image_seq_len``, ``sigmas``: see ``Schedule.from_scheduler_config``).
    """

    latent_is_image = True
    kind = "gaussian_mixture"
    path = None  # its scheduler config puts it on either path
    options = ("scheduler_config", "schedule_options")

    def __init__(self, weights: Any, means: Any, covariances: Any, *, patch_size: int | None = None,
                 scheduler_config: dict[str, Any] | None = None, schedule_options: dict[str, Any] | None = None,
                 dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu",
                 chunk_rows: int = 4096) -> None:
        super().__init__()
        self.device, self.dtype = torch.device(device), dtype
        self.scheduler_config = dict(scheduler_config or STABLE_DIFFUSION_SCHEDULER_CONFIG)
        self.prediction_type = "flow" if is_flow_config(self.scheduler_config) else "epsilon"
        self.flow_options = dict(schedule_options or {})
        if self.flow_options and self.prediction_type != "flow":
            raise ValueError(f"schedule_options {sorted(self.flow_options)} apply to a flow scheduler config only")
        self.patch_size = patch_size
        self.chunk_rows = chunk_rows
        as64 = lambda v: torch.as_tensor(np.asarray(v), dtype=torch.float64)  # noqa: E731
        weights, means, cov = as64(weights), as64(means), as64(covariances)
        if weights.ndim != 1 or means.ndim != 2 or means.shape[0] != weights.shape[0]:
            raise ValueError("weights must be (K,) and means (K, D)")
        if not torch.all(weights > 0):
            raise ValueError("mixture weights must be positive")
        k, d = means.shape
        if cov.shape == (k,):
            self.covariance_type, lam, basis = "spherical", cov[:, None].expand(k, d), None
        elif cov.shape == (k, d):
            self.covariance_type, lam, basis = "diag", cov, None
        elif cov.shape == (k, d, d):
            self.covariance_type = "full"
            lam, basis = torch.linalg.eigh(0.5 * (cov + cov.transpose(1, 2)))
        else:
            raise ValueError(f"covariances of shape {tuple(cov.shape)} fit none of (K,), (K, D), (K, D, D)"
                             f" for K={k}, D={d}")
        if not torch.all(lam > 0):
            raise ValueError("covariances must be positive definite")
        self.weights, self.means, self.covariances = weights, means, cov
        put = lambda t: None if t is None else t.to(self.device, self.dtype)  # noqa: E731
        self._log_weights = put(torch.log(weights / weights.sum()))
        self._means, self._eigvals, self._basis = put(means), put(lam), put(basis)
        self._prior_mean = put((weights / weights.sum()) @ means)
        self._precision_cache: dict[tuple[float, float], tuple[Tensor, Tensor]] = {}

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    # -- the network ---------------------------------------------------------------------------
    def forward(self, z: Tensor, timestep: float, embedding: Tensor | None) -> Tensor:
        rows = self._to_rows(z.to(self.device, self.dtype))
        if self.prediction_type == "flow":
            sigma = float(timestep) / self.scheduler_config.get("num_train_timesteps", 1000)
            out = [self.velocity(chunk, 1.0 - sigma, sigma) for chunk in rows.split(self.chunk_rows)]
        else:
            alpha_bar = float(self.alphas_cumprod[timestep])
            out = [self.noise_posterior_mean(chunk, alpha_bar) for chunk in rows.split(self.chunk_rows)]
        return self._from_rows(torch.cat(out), z.shape).to(z.dtype)

    def schedule_options(self, latent_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
        return dict(self.flow_options)

    def prior_mean(self, shape: tuple[int, ...]) -> Tensor:
        """``E[x]`` under the prior for a batch of ``shape`` (each patch the mixture's mean)."""
        rows = self._to_rows(torch.zeros(shape, device=self.device, dtype=self.dtype))
        return self._from_rows(self._prior_mean.expand_as(rows), torch.Size(shape))

    def noise_posterior_mean(self, rows: Tensor, alpha_bar: float) -> Tensor:
        """``E[n | z]`` for rows of shape (M, D) at the VP noise level ``alpha_bar``."""
        return self.posterior_noise(rows, math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar))

    def velocity(self, rows: Tensor, a: float, s: float) -> Tensor:
        """``E[n - x | z]`` for rows of shape (M, D) of ``z = a x + s n`` (``a + s = 1``: a rectified flow)."""
        noise = self.posterior_noise(rows, a, s)
        data = (rows - s * noise) / a if a > 0 else self._prior_mean.expand_as(rows)
        return noise - data

    def posterior_noise(self, rows: Tensor, a: float, s: float) -> Tensor:
        """``E[n | z]`` for rows of shape (M, D) of ``z = a x + s n``."""
        variances = a * a * self._eigvals + s * s                          # (K, D)
        if self._basis is None:
            centred = rows[:, None, :] - a * self._means                  # (M, K, D)
            whitened = centred / variances
            mahalanobis = (centred * whitened).sum(-1)
        else:
            k, d = self._means.shape
            precisions, precision_means = self._precisions(a, s, variances)
            whitened = (rows @ precisions).view(-1, k, d)
            whitened -= a * precision_means                                # C_k^{-1} (z - a mu_k)
            mahalanobis = (torch.einsum("md,mkd->mk", rows, whitened)
                           - a * torch.einsum("kd,mkd->mk", self._means, whitened))
        log_lik = -0.5 * (mahalanobis + torch.log(variances).sum(-1) + self.dim * math.log(2 * math.pi))
        resp = torch.softmax(self._log_weights + log_lik, dim=-1)          # (M, K)
        return s * torch.einsum("mk,mkd->md", resp, whitened)

    def _precisions(self, a: float, s: float, variances: Tensor) -> tuple[Tensor, Tensor]:
        """Every ``C_k^{-1} = U_k diag(1 / v_k) U_k^T`` side by side, (D, K D), and ``C_k^{-1} mu_k``, (K, D), at
        the level ``(a, s)``: one (M, D) x (D, K D) product then whitens every row for every component,
        2-3x faster for a batch than rotating rows into and out of each eigenbasis. Kept for the last few
        levels, since the fixed-point methods call one level K times in a row (same values, bit for bit)."""
        key = (a, s)
        if key not in self._precision_cache:
            k, d = self._means.shape
            precision = (self._basis / variances[:, None, :]) @ self._basis.transpose(1, 2)
            if len(self._precision_cache) >= PRECISION_CACHE_LEVELS:
                self._precision_cache.pop(next(iter(self._precision_cache)))   # the oldest level
            self._precision_cache[key] = (precision.transpose(0, 1).reshape(d, k * d),
                                          torch.einsum("kd,kde->ke", self._means, precision))
        return self._precision_cache[key]

    def _to_rows(self, z: Tensor) -> Tensor:
        p = self.patch_size
        if p is None:
            rows = z.reshape(z.shape[0], -1)
        else:
            b, c, h, w = z.shape
            if h % p or w % p:
                raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
            rows = z.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(-1, c * p * p)
        if rows.shape[1] != self.dim:
            raise ValueError(f"input of shape {tuple(z.shape)} gives {rows.shape[1]}-dim rows; the mixture has "
                             f"{self.dim} dims")
        return rows

    def _from_rows(self, rows: Tensor, shape: torch.Size) -> Tensor:
        p = self.patch_size
        if p is None:
            return rows.reshape(shape)
        b, c, h, w = shape
        return rows.reshape(b, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(shape)

    # -- images and prompts: the latent is the image --------------------------------------------
    def encode(self, images: Tensor) -> Tensor:
        return images.to(self.device, self.dtype)

    def decode(self, latents: Tensor) -> Tensor:
        return latents.clamp(-1, 1)

    def condition(self, prompt: Prompt, batch_size: int) -> Conditioning:
        return Conditioning(None, None)  # an unconditional prior: prompts change nothing

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        meta = {"patch_size": self.patch_size, "scheduler_config": self.scheduler_config}
        if self.flow_options:
            meta["schedule_options"] = self.flow_options
        with open(path, "wb") as f:
            np.savez(f, weights=self.weights.numpy(), means=self.means.numpy(),
                     covariances=self.covariances.numpy(), meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
             **kwargs: Any) -> "GaussianMixtureDenoiser":
        """A saved mixture (on the CPU in float64 unless ``device``, ``dtype`` say otherwise); keywords override the
        saved ones (``scheduler_config`` moves it to another path)."""
        kwargs |= {"device": device or "cpu", "dtype": dtype or torch.float64}
        try:
            with np.load(path, allow_pickle=False) as f:
                meta = json.loads(str(f["meta"]))
                saved = {"patch_size": meta["patch_size"], "scheduler_config": meta["scheduler_config"],
                         "schedule_options": meta.get("schedule_options")}
                return cls(f["weights"], f["means"], f["covariances"], **{**saved, **kwargs})
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path}: not a saved GaussianMixtureDenoiser ({type(exc).__name__}: {exc})") from exc


def extract_patches(images: Sequence[np.ndarray], patch_size: int, stride: int | None = None) -> np.ndarray:
    """Rows ``(C * p * p)`` of all p x p patches (step ``stride``) of images shaped (H, W, C) in [-1, 1]."""
    stride = stride or patch_size
    rows = []
    for image in images:
        windows = np.lib.stride_tricks.sliding_window_view(image, (patch_size, patch_size), axis=(0, 1))
        windows = windows[::stride, ::stride]                              # (nh, nw, C, p, p)
        rows.append(windows.reshape(-1, windows.shape[2] * patch_size * patch_size))
    return np.concatenate(rows)


def fit_gaussian_mixture(images: Sequence[np.ndarray], *, patch_size: int = 8, n_components: int = 16,
                         covariance_type: str = "full", stride: int | None = None, max_patches: int = 50_000,
                         reg_covar: float = 1e-4, seed: int = 0, **kwargs: Any) -> GaussianMixtureDenoiser:
    """Fit a patch mixture with scikit-learn's EM to images shaped (H, W, C) with values in [-1, 1].

    The fit runs on one BLAS thread: EM's sums come out differently with 1 and 2 threads, so a fit with
    more would depend on the cores a run was given, not only on its settings."""
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits

    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got {covariance_type!r}")
    rows = extract_patches(images, patch_size, stride)
    rng = np.random.default_rng(seed)
    if len(rows) > max_patches:
        rows = rows[rng.choice(len(rows), max_patches, replace=False)]
    with threadpool_limits(1):
        gm = GaussianMixture(n_components, covariance_type=covariance_type, reg_covar=reg_covar,
                             random_state=seed, max_iter=200).fit(rows)
    return GaussianMixtureDenoiser(gm.weights_, gm.means_, gm.covariances_, patch_size=patch_size, **kwargs)
