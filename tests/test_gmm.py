import math

import numpy as np
import pytest
import torch

from diffinv.models import GaussianMixtureDenoiser, extract_patches, fit_gaussian_mixture
from conftest import random_mixture


def score_eps(model: GaussianMixtureDenoiser, z: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """Independent reference: eps = -s * grad log p(z), the density written out with torch.distributions."""
    a, s = math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
    d = model.dim
    cov = model.covariances
    if cov.ndim == 1:
        cov = cov[:, None, None] * torch.eye(d)
    elif cov.ndim == 2:
        cov = torch.diag_embed(cov)
    comps = torch.distributions.MultivariateNormal(a * model.means, a * a * cov + s * s * torch.eye(d))
    z = z.clone().requires_grad_(True)
    log_p = torch.logsumexp(comps.log_prob(z[:, None, :]) + torch.log(model.weights / model.weights.sum()), -1)
    (grad,) = torch.autograd.grad(log_p.sum(), z)
    return -s * grad


@pytest.mark.parametrize("kind", ["spherical", "diag", "full"])
@pytest.mark.parametrize("timestep", [0, 250, 999])
def test_noise_prediction_equals_minus_s_times_score(kind, timestep):
    rng = np.random.default_rng(3)
    k, d = 4, 6
    cov = {"spherical": rng.uniform(0.1, 0.5, k), "diag": rng.uniform(0.1, 0.5, (k, d)),
           "full": np.stack([a @ a.T + 0.1 * np.eye(d) for a in rng.normal(0, 0.4, (k, d, d))])}[kind]
    model = GaussianMixtureDenoiser(rng.uniform(1, 2, k), rng.normal(0, 1, (k, d)), cov)
    assert model.covariance_type == kind
    z = torch.from_numpy(rng.normal(0, 1, (5, d)))
    alpha_bar = float(model.alphas_cumprod[timestep])
    torch.testing.assert_close(model.forward(z, timestep, None), score_eps(model, z, alpha_bar))


def test_patches_are_denoised_independently():
    rng = np.random.default_rng(0)
    c, p = 3, 4
    base = random_mixture(k=3, d=c * p * p, seed=2)
    patched = GaussianMixtureDenoiser(base.weights, base.means, base.covariances, patch_size=p)
    image = torch.from_numpy(rng.normal(0, 1, (2, c, 8, 12)))
    out = patched.forward(image, 500, None)
    patch = image[1, :, 4:8, 8:12].reshape(1, -1)
    torch.testing.assert_close(out[1, :, 4:8, 8:12].reshape(1, -1), base.forward(patch, 500, None))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        patched.forward(image[..., :7], 500, None)


def test_extract_patches_uses_the_model_layout():
    image = np.arange(8 * 8 * 3, dtype=float).reshape(8, 8, 3)
    rows = extract_patches([image], 4)
    assert rows.shape == (4, 48)
    np.testing.assert_array_equal(rows[1].reshape(3, 4, 4), image[0:4, 4:8].transpose(2, 0, 1))


def test_fit_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    images = [np.clip(rng.normal(0, 0.3, (16, 16, 3)), -1, 1) for _ in range(4)]
    model = fit_gaussian_mixture(images, patch_size=4, n_components=2, covariance_type="full", stride=2)
    path = tmp_path / "gmm.npz"
    model.save(path)
    loaded = GaussianMixtureDenoiser.load(path)
    assert loaded.patch_size == 4 and loaded.covariance_type == "full"
    z = torch.from_numpy(rng.normal(0, 1, (1, 3, 8, 8)))
    torch.testing.assert_close(loaded.forward(z, 100, None), model.forward(z, 100, None))
    (tmp_path / "bad.npz").write_bytes(b"not a mixture")
    with pytest.raises(ValueError, match="bad.npz"):
        GaussianMixtureDenoiser.load(tmp_path / "bad.npz")


def test_kept_precisions_give_the_same_prediction_bit_for_bit():
    from diffinv.models.gmm import PRECISION_CACHE_LEVELS

    model = random_mixture()
    z = torch.randn(6, model.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    levels = [981, 501, 981, *range(1, 1000, 111), 981]          # repeats, then more levels than are kept
    assert len(set(levels)) > PRECISION_CACHE_LEVELS
    got = [model.forward(z, t, None) for t in levels]
    for t, value in zip(levels, got):
        fresh = random_mixture()                        # nothing kept: computed from scratch
        assert torch.equal(fresh.forward(z, t, None), value)
    assert len(model._precision_cache) == PRECISION_CACHE_LEVELS


def test_the_fit_runs_on_one_blas_thread_whatever_the_caller_allows(monkeypatch):
    """EM's sums differ with 1 and 2 BLAS threads on the demo's fit (measured: other weights), so the fit
    pins one thread: its result depends on the settings, not on the cores a job was given."""
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_info, threadpool_limits

    seen = []
    fit = GaussianMixture.fit

    def recording(self, X, y=None):
        seen.append([(pool["internal_api"], pool["num_threads"]) for pool in threadpool_info()])
        return fit(self, X, y)

    monkeypatch.setattr(GaussianMixture, "fit", recording)
    rng = np.random.default_rng(0)
    images = [rng.uniform(-1, 1, (16, 16, 3))]
    with threadpool_limits(2):
        fit_gaussian_mixture(images, patch_size=4, n_components=2, stride=4)
    assert seen and "openblas" in {api for api, _ in seen[0]}
    assert all(threads == 1 for _, threads in seen[0])
