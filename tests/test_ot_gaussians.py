"""NOT and ENOT's solver core, proven on Gaussians, where the OT map is known in closed form."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from hyperdomain.image.translators import (
    ENOTConfig, NOTConfig, affine_map, enot_optimizers, enot_step, expectile_loss, gaussian_ot_map, l2_uvp,
    mean_squared_cost, not_optimizers, not_step, quadratic_cost, sqrtm_psd, weak_cost,
)
from hyperdomain.image.translators.toy import NoisyMap, gaussian_sampler, mlp, random_gaussian_problem, random_spd


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


# --- the steps' gradients, against the papers' losses written out independently ------------------------

def _batches(*tensors):
    """A sampler handing out the given batches in order (and failing if asked for one more)."""
    it = iter(tensors)
    return lambda n: next(it)[:n]


def _sgd(module, lr=0.1):
    return torch.optim.SGD(module.parameters(), lr=lr)


def _after_sgd(module, grads, lr=0.1):
    return [p.detach() - lr * g for p, g in zip(module.parameters(), grads)]


def test_enot_step_follows_ott_jax_loss():
    torch.manual_seed(0)
    T, g = mlp(3, 3, 16, 2), mlp(3, 1, 16, 2)
    T0, g0 = copy.deepcopy(T), copy.deepcopy(g)
    x, y = torch.randn(32, 3), torch.randn(32, 3) + 1
    tau, weight = 0.9, 0.7
    enot_step(T, g, _sgd(T), _sgd(g), _batches(x), _batches(y),
              ENOTConfig(batch=32, expectile=tau, expectile_weight=weight))

    # ott-jax's ExpectileNeuralDual._loss_fn, its stop-gradients as detach, for a map network
    c = quadratic_cost
    y_hat = T0(x)
    y_hat_sg = y_hat.detach()
    g_target = g0(y)[:, 0]
    g_star_source = c(x, y_hat_sg) - g0(y_hat_sg)[:, 0]
    diff_1 = (g_star_source - c(x, y)).detach() + g_target
    diff_2 = (g_target - c(x, y)).detach() + g_star_source
    ott_expectile = lambda d: torch.where(d >= 0, tau, 1 - tau) * d ** 2  # noqa: E731
    reg = (ott_expectile(diff_1).mean() + ott_expectile(diff_2).mean()) * weight
    dual = -(g_target + g_star_source).mean()
    g_frozen = {k: v.detach() for k, v in g0.named_parameters()}
    amor = (c(x, y_hat) - torch.func.functional_call(g0, g_frozen, (y_hat,))[:, 0]).mean()
    grads = torch.autograd.grad(reg + dual + amor, [*T0.parameters(), *g0.parameters()])
    n_T = len(list(T0.parameters()))

    for got, want in zip([*T.parameters(), *g.parameters()],
                         _after_sgd(T0, grads[:n_T]) + _after_sgd(g0, grads[n_T:])):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)


def test_not_step_follows_the_papers_losses():
    torch.manual_seed(0)
    T, f = mlp(3, 3, 16, 2), mlp(3, 1, 16, 2)
    T0, f0 = copy.deepcopy(T), copy.deepcopy(f)
    xs, y = [torch.randn(16, 3) for _ in range(3)], torch.randn(16, 3) + 1
    not_step(T, f, _sgd(T), _sgd(f), _batches(*xs), _batches(y), NOTConfig(batch=16, t_steps=2))

    for x in xs[:2]:  # two map updates against the fixed potential: min E[c(x, T x) - f(T x)]
        loss = (0.5 * ((x - T0(x)) ** 2).sum(1) - f0(T0(x))[:, 0]).mean()
        new = _after_sgd(T0, torch.autograd.grad(loss, list(T0.parameters())))
        with torch.no_grad():
            for p, q in zip(T0.parameters(), new):
                p.copy_(q)
    # then the potential against the updated map: max E f(y) - E f(T x)
    loss = f0(T0(xs[2]).detach()).mean() - f0(y).mean()
    want_f = _after_sgd(f0, torch.autograd.grad(loss, list(f0.parameters())))
    for got, want in zip([*T.parameters(), *f.parameters()], [*T0.parameters(), *want_f]):
        torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-5, atol=1e-6)


def test_steps_are_deterministic_given_the_seed():
    def run(method):
        torch.manual_seed(7)
        f = mlp(2, 1, 16, 2)
        sx, sy = (lambda n: torch.randn(n, 2)), (lambda n: torch.randn(n, 2) * 2)
        if method == "not":
            T = NoisyMap(mlp(4, 2, 16, 2))
            config = NOTConfig(batch=8, t_steps=2, gamma=0.5, noise_shape=(2,), z_size=3)
            opts = not_optimizers(T, f, config)
            step = lambda: not_step(T, f, *opts, sx, sy, config)  # noqa: E731
        else:
            T = mlp(2, 2, 16, 2)
            config = ENOTConfig(batch=8)
            opts = enot_optimizers(T, f, config)
            step = lambda: enot_step(T, f, *opts, sx, sy, config)  # noqa: E731
        losses = torch.stack([torch.stack(list(step().values())) for _ in range(3)])
        return [losses, *[p.detach().clone() for p in [*T.parameters(), *f.parameters()]]]

    for method in ("not", "enot"):
        first, second = run(method), run(method)
        assert all(torch.equal(a, b) for a, b in zip(first, second))
