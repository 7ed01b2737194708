import torch

from diffinv import invert
from diffinv.solvers import anderson, anderson_weights
from diffinv.evaluation.stats import fixed_point_errors


def test_anderson_solves_a_linear_contraction_faster_than_picard():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a = 0.9 * a / torch.linalg.matrix_norm(a, ord=2)
    b = torch.randn(3, 6, generator=g, dtype=torch.float64)
    f = lambda u: u @ a.T + b  # noqa: E731
    exact = torch.linalg.solve(torch.eye(6, dtype=torch.float64) - a, b.T).T
    fast = anderson(f, torch.zeros_like(b), iterations=100, window=6, tol=1e-12)
    slow = anderson(f, torch.zeros_like(b), iterations=100, window=0, tol=1e-12)
    assert fast.converged and fast.evaluations < 15 < slow.evaluations
    torch.testing.assert_close(fast.solution, exact)


def test_anderson_weights_sum_to_one_and_survive_zero_residuals():
    r = [torch.ones(2, 3), -torch.ones(2, 3)]
    w = anderson_weights(r)
    torch.testing.assert_close(w.sum(1), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(w, torch.full((2, 2), 0.5, dtype=torch.float64))
    zero = anderson_weights([torch.zeros(1, 3), torch.zeros(1, 3)])
    assert zero.tolist() == [[0.0, 1.0]]


def test_fixed_point_errors_report_non_convergence(mixture, mixture_samples):
    result = invert("ddim", mixture, mixture_samples[:2], num_steps=5, trajectory=True)
    rows = fixed_point_errors(mixture, result, max_iter=2, tol=1e-14)
    assert len(rows) == 10 and not any(r["converged"] for r in rows)
    assert all(r["iterations"] == 2 and r["residual"] > 1e-14 for r in rows)
