"""NOT and ENOT's solver core, proven on Gaussians, where the OT map is known in closed form."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from hyperdomain.image.translators import (
    ENOTConfig, NOTConfig, affine_map, enot_optimizers, enot_step, expectile_loss, gaussian_ot_map, l2_uvp,
    gamma_at, mean_squared_cost, not_optimizers, not_step, quadratic_cost, sqrtm_psd, weak_cost,
)
from hyperdomain.image.translators.toy import NoisyMap, gaussian_sampler, mlp, random_gaussian_problem, random_spd


pytestmark = pytest.mark.usefixtures("one_thread")  # (conftest)


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



def test_gamma_rises_linearly_over_the_warm_up():
    config = NOTConfig(gamma=0.66, gamma_warmup_steps=100)
    assert [gamma_at(config, s) for s in (0, 50, 100, 1000)] == pytest.approx([0.0, 0.33, 0.66, 0.66])
    assert gamma_at(NOTConfig(gamma=0.5), 0) == 0.5


def test_shape_mistakes_fail_where_they_happen_naming_both_shapes():
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(4, 3, 1\)"):
        weak_cost(torch.randn(4, 3), torch.randn(4, 3, 1), 0.5)
    with pytest.raises(ValueError, match="at least 2 samples"):
        weak_cost(torch.randn(4, 3), torch.randn(4, 1, 3), 0.5)
    T, f = mlp(3, 3, 8, 1), mlp(3, 2, 8, 1)  # a "potential" with two outputs per sample
    config = ENOTConfig(batch=4)
    with pytest.raises(ValueError, match=r"input \(4, 3\), output \(4, 2\)"):
        enot_step(T, f, *enot_optimizers(T, f, config), lambda n: torch.randn(n, 3), lambda n: torch.randn(n, 3), config)

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


# --- learning the map between two Gaussians ------------------------------------------------------------

def _train(step_fn, opts, steps: int) -> None:
    # The max-min game keeps circling the solution at a constant lr; a linear decay to a tenth lets the
    # last iterate settle (the caller owns the loop and its schedule; the step functions take none).
    schedules = [torch.optim.lr_scheduler.LambdaLR(o, lambda i: 1 - 0.9 * i / steps) for o in opts]
    for i in range(steps):
        step_fn(i)
        for s in schedules:
            s.step()


# Plain MLPs (2 hidden layers of 64, SiLU), Adam with beta1 = 0 (momentum makes both games oscillate
# far more), a problem with standard normal means and covariances of eigenvalues in [1/4, 4] whose
# mean-shift-only map is 31% (2-D) and 32% (16-D) L2-UVP. NOT makes 3-4 map updates per potential
# update, not its paper's 10: on these problems 10 only costs time (benchmarks/translator_ot.py).
# Measured L2-UVP over seeds 0-5 with these settings: ENOT 0.5-1.0% (2-D), 3.2-3.8% (16-D);
# NOT 1.7-2.2% (2-D), 3.5-4.7% (16-D).
CASES = {
    "enot-2d": ("enot", 2, 200, ENOTConfig(lr=2e-3, betas=(0.0, 0.9), batch=128), 5.0),
    "not-2d": ("not", 2, 80, NOTConfig(lr=2e-3, betas=(0.0, 0.9), batch=128, t_steps=4), 5.0),
    "enot-16d": ("enot", 16, 400, ENOTConfig(lr=2e-3, betas=(0.0, 0.9), batch=128), 10.0),
    "not-16d": ("not", 16, 250, NOTConfig(lr=2e-3, betas=(0.0, 0.9), batch=64, t_steps=3), 10.0),
}


def learn_gaussian_map(method: str, dim: int, steps: int, config, seed: int = 0) -> dict[str, float]:
    """Train ``method`` from N(m1, S1) to N(m2, S2); L2-UVP of the learnt map and of two naive maps."""
    m1, S1, m2, S2 = random_gaussian_problem(dim, seed=3)
    T_star = affine_map(*gaussian_ot_map(m1, S1, m2, S2))
    sample_x, sample_y = gaussian_sampler(m1, S1), gaussian_sampler(m2, S2)
    torch.manual_seed(seed)
    T, f = mlp(dim, dim), mlp(dim, 1)
    if method == "not":
        opts = not_optimizers(T, f, config)
        _train(lambda i: not_step(T, f, *opts, sample_x, sample_y, config, step=i), opts, steps)
    else:
        opts = enot_optimizers(T, f, config)
        _train(lambda i: enot_step(T, f, *opts, sample_x, sample_y, config), opts, steps)
    torch.manual_seed(1000 + seed)
    x, var = sample_x(8192), torch.trace(S2).item()
    shift = (m2 - m1).float()
    return {"learnt": l2_uvp(T, T_star, x, var), "identity": l2_uvp(lambda v: v, T_star, x, var),
            "mean_shift": l2_uvp(lambda v: v + shift, T_star, x, var)}


@pytest.mark.parametrize("case", list(CASES))
def test_learns_the_gaussian_ot_map(case):
    method, dim, steps, config, bound = CASES[case]
    uvp = learn_gaussian_map(method, dim, steps, config)
    print(f"{case}: L2-UVP {uvp['learnt']:.2f}% (identity {uvp['identity']:.1f}%, mean shift {uvp['mean_shift']:.1f}%)")
    assert uvp["learnt"] < bound
    # the bound means something: a map that does nothing, or moves the mean only, is far from it
    assert uvp["identity"] > 3 * bound and uvp["mean_shift"] > 3 * bound


WEAK_PROBLEM = (torch.tensor([1.0, -1.0]), torch.tensor([-0.5, 2.0]), 0.25, 1.0)  # m1, m2, s1, s2


def learn_weak_spread(seed: int = 0) -> dict[str, torch.Tensor | float]:
    """Weak NOT (gamma = 1) from N(m1, s1 I) to N(m2, s2 I); statistics of T(x, z) over 64 z per x."""
    m1, m2, s1, s2 = WEAK_PROBLEM
    eye = torch.eye(2, dtype=torch.float64)
    sample_x, sample_y = gaussian_sampler(m1, s1 * eye), gaussian_sampler(m2, s2 * eye)
    config = NOTConfig(lr=2e-3, betas=(0.0, 0.9), batch=128, t_steps=4, gamma=1.0, noise_shape=(2,), z_size=4,
                       z_std=1.0)
    torch.manual_seed(seed)
    T, f = NoisyMap(mlp(4, 2)), mlp(2, 1)
    opts = not_optimizers(T, f, config)
    _train(lambda i: not_step(T, f, *opts, sample_x, sample_y, config, step=i), opts, 150)

    torch.manual_seed(1000 + seed)
    x = sample_x(512)
    x_rep = x.repeat_interleave(64, 0)
    with torch.no_grad():
        y = T(x_rep, torch.randn(x_rep.shape[0], 2) * config.z_std).view(512, 64, 2)
    pushed = y.flatten(0, 1)
    return {"mean_err": 100 * ((y.mean(1) - (x + m2 - m1)) ** 2).sum(1).mean().item() / (2 * s2),  # % of Var(Q)
            "cond_var": y.var(1).sum(1).mean().item(), "mean": pushed.mean(0), "cov": torch.cov(pushed.T)}


def test_weak_not_with_gamma_one_learns_a_mean_preserving_spread():
    # With gamma = 1 the weak cost is 0.5 |x - E_mu y|^2: from N(m1, s1 I) to the wider N(m2, s2 I) the
    # optimum sends x to a law with mean x + m2 - m1 (the barycentric map is the shift) and total
    # conditional variance 2 (s2 - s1) on average, so Var(Q) splits into the spread of P and the noise.
    # The strong OT map (a dilation by 2) has the wrong conditional mean (25% of Var(Q) away), and a map
    # that ignores z has no conditional variance. Measured over seeds 0-5: mean off by 1.5-2.5%,
    # conditional variance 1.49-1.92 (optimum 1.5), pushed covariance within 0.27 of s2 I; after 150
    # steps the potential pins the pushed law only that closely, hence the loose variance bounds.
    m1, m2, s1, s2 = WEAK_PROBLEM
    got = learn_weak_spread()
    print(f"weak NOT: conditional mean off by {got['mean_err']:.2f}% of Var(Q), "
          f"conditional variance {got['cond_var']:.3f} (optimum {2 * (s2 - s1)})")
    assert got["mean_err"] < 5.0
    assert 0.65 * 2 * (s2 - s1) < got["cond_var"] < 1.35 * 2 * (s2 - s1)
    torch.testing.assert_close(got["mean"], m2, rtol=0, atol=0.2)
    torch.testing.assert_close(got["cov"], s2 * torch.eye(2), rtol=0, atol=0.4)
