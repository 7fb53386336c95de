"""NOT and ENOT's solver core, proven on Gaussians, where the OT map is known in closed form."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from hyperdomain.image.translators import (
    ENOTConfig, NOTConfig, affine_map, enot_step, expectile_loss, gaussian_ot_map, l2_uvp, mean_squared_cost,
    not_step, quadratic_cost, sqrtm_psd, weak_cost,
)
from hyperdomain.image.translators.toy import gaussian_sampler, mlp, random_gaussian_problem, random_spd


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny MLPs run fastest on one thread, and the test machine's cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- closed form ---------------------------------------------------------------------------------------

def test_gaussian_ot_map_commuting_covariances_is_elementwise_sqrt_ratio():
    m1, m2 = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.0, 3.0, -1.0])
    s1, s2 = torch.tensor([0.5, 2.0, 4.0]), torch.tensor([2.0, 0.5, 1.0])
    A, b = gaussian_ot_map(m1, torch.diag(s1), m2, torch.diag(s2))
    assert A.dtype == torch.float64
    torch.testing.assert_close(A, torch.diag((s2 / s1).sqrt()).double(), rtol=0, atol=1e-12)
    torch.testing.assert_close(b, (m2 - (s2 / s1).sqrt() * m1).double(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dim", [2, 5, 16])
def test_gaussian_ot_map_is_a_symmetric_positive_map_pushing_one_gaussian_onto_the_other(dim):
    # An affine map x -> A x + b with A symmetric positive definite is the gradient of a convex function;
    # if it also pushes N(m1, S1) onto N(m2, S2), Brenier's theorem makes it the unique OT map.
    m1, S1, m2, S2 = random_gaussian_problem(dim, seed=dim)
    A, b = gaussian_ot_map(m1, S1, m2, S2)
    torch.testing.assert_close(A, A.T, rtol=0, atol=0)
    assert torch.linalg.eigvalsh(A).min() > 0
    torch.testing.assert_close(A @ S1 @ A.T, S2, rtol=0, atol=1e-10)
    torch.testing.assert_close(A @ m1 + b, m2, rtol=0, atol=1e-12)
    # and the other textbook form, A = S2^1/2 (S2^1/2 S1 S2^1/2)^-1/2 S2^1/2
    r2 = sqrtm_psd(S2)
    other = r2 @ torch.linalg.inv(sqrtm_psd(r2 @ S1 @ r2)) @ r2
    torch.testing.assert_close(A, other, rtol=0, atol=1e-10)


def test_sqrtm_psd_squares_back():
    S = random_spd(6, torch.Generator().manual_seed(0))
    R = sqrtm_psd(S)
    torch.testing.assert_close(R @ R, S, rtol=0, atol=1e-12)
    torch.testing.assert_close(R, R.T, rtol=0, atol=1e-15)


def test_l2_uvp_of_an_offset_map_is_the_offset_over_the_target_variance():
    A, b = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64), torch.tensor([1.0, -1.0], dtype=torch.float64)
    T_star = affine_map(A, b)
    x = torch.randn(100, 2, dtype=torch.float64)
    offset = torch.tensor([0.3, -0.4], dtype=torch.float64)  # |offset|^2 = 0.25
    assert l2_uvp(lambda v: T_star(v) + offset, T_star, x, target_var=5.0) == pytest.approx(100 * 0.25 / 5.0, rel=1e-12)
    assert l2_uvp(T_star, T_star, x, target_var=5.0) == 0.0


# --- losses --------------------------------------------------------------------------------------------

def test_expectile_loss_by_hand():
    u = torch.tensor([-2.0, -0.5, 0.0, 1.0, 3.0], dtype=torch.float64, requires_grad=True)
    # tau = 0.99: weight 0.01 below zero, 0.99 at and above it
    loss = expectile_loss(u, 0.99)
    torch.testing.assert_close(loss, torch.tensor([0.04, 0.0025, 0.0, 0.99, 8.91], dtype=torch.float64))
    (grad,) = torch.autograd.grad(loss.sum(), u)
    torch.testing.assert_close(grad, torch.tensor([-0.04, -0.01, 0.0, 1.98, 5.94], dtype=torch.float64))
    # tau = 0.5: the symmetric case, u^2 / 2
    torch.testing.assert_close(expectile_loss(u, 0.5), torch.tensor([2.0, 0.125, 0.0, 0.5, 4.5], dtype=torch.float64))


def test_costs_per_sample_over_any_shape():
    x, y = torch.randn(3, 2, 4, 5), torch.randn(3, 2, 4, 5)
    torch.testing.assert_close(quadratic_cost(x, y), torch.stack([0.5 * ((a - b) ** 2).sum() for a, b in zip(x, y)]))
    torch.testing.assert_close(mean_squared_cost(x, y), torch.stack([F.mse_loss(a, b) for a, b in zip(x, y)]))
    with pytest.raises(ValueError, match=r"\(3, 2, 4, 5\).*\(3, 40\)"):
        quadratic_cost(x, y.flatten(1))


@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0])
def test_weak_cost_is_the_not_code_variance_form(gamma):
    B, K = 5, 6
    x, ys = torch.randn(B, 3, 4, dtype=torch.float64), torch.randn(B, K, 3, 4, dtype=torch.float64)
    # NOT's weak image cost, as its notebook writes it: mse to the conditional mean + (1 - gamma - 1/K) var
    mean, var = ys.mean(1), ys.var(1)  # unbiased variance over the K draws
    not_code = ((x - mean) ** 2).flatten(1).mean(1) + (1 - gamma - 1 / K) * var.flatten(1).mean(1)
    torch.testing.assert_close(weak_cost(x, ys, gamma, mean_squared_cost), not_code)
    # the paper's C(x, mu) = E_mu 0.5|x - y|^2 - gamma / 2 Var(mu), Var the total (unbiased) variance
    strong = 0.5 * ((x[:, None] - ys) ** 2).flatten(2).sum(2).mean(1)
    paper = strong - 0.5 * gamma * var.flatten(1).sum(1)
    torch.testing.assert_close(weak_cost(x, ys, gamma, quadratic_cost), paper)
