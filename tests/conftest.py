import numpy as np
import pytest
import torch

from diffinv.models import GaussianMixtureDenoiser


def random_mixture(k: int = 8, d: int = 64, seed: int = 0, **kwargs) -> GaussianMixtureDenoiser:
    """Well-separated components (means ~ N(0, 1)) with random full covariances.

    The design doc's test model kind; ife_noerr's place between DDIM and IFE holds for separated
    components but not for every mixture (see the note on issue 2).
    """
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 1.0, (k, d))
    factors = rng.normal(0, 1, (k, d, d)) / np.sqrt(d)
    cov = 0.05 * factors @ factors.transpose(0, 2, 1) + 1e-3 * np.eye(d)
    weights = rng.uniform(0.5, 1.5, k)
    return GaussianMixtureDenoiser(weights / weights.sum(), means, cov, **kwargs)


def sample_mixture(model: GaussianMixtureDenoiser, n: int, seed: int = 1) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    w = model.weights.numpy() / model.weights.numpy().sum()
    comp = rng.choice(len(w), n, p=w)
    x = np.stack([rng.multivariate_normal(model.means[c].numpy(), model.covariances[c].numpy()) for c in comp])
    return torch.from_numpy(x)


def rel_error(a, b) -> float:
    """The relative error ||a - b|| / ||b||."""
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="session")
def mixture():
    return random_mixture()


@pytest.fixture(scope="session")
def flow():
    """The session's mixture on the rectified-flow path, with SD3's scheduler config: a velocity model."""
    from diffinv.schedule import SD3_SCHEDULER_CONFIG

    return random_mixture(scheduler_config=SD3_SCHEDULER_CONFIG)


@pytest.fixture(scope="session")
def mixture_samples(mixture):
    return sample_mixture(mixture, 40)


def pytest_configure(config):
    # Under pytest-xdist each worker gets one core's worth of threads; oversubscribed intra-op
    # threads make small tensor ops many times slower on 2 cores.
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    # The demo DAG takes minutes: start it first, so that under `-n 2 --dist loadfile` the other
    # worker runs every other file meanwhile instead of after it.
    items.sort(key=lambda item: item.path.name != "test_workflow_demo.py")
