"""NOT and ENOT on images: the loop's losses against the solver core, and a tiny unpaired run."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

from hyperdomain.errors import HyperdomainError
from hyperdomain.image.translators import (
    ENOTConfig, NOTConfig, enot_optimizers, enot_step, mean_squared_cost, not_optimizers, not_step, quadratic_cost,
)
from hyperdomain.image.translators.image_ot import (
    ImagePotential, enot_losses, image_cost, is_map_step, not_losses, not_noise, one_adam, potential_step,
)
from hyperdomain.image.translators.toy import NoisyMap, gaussian_sampler, mlp, random_gaussian_problem
from hyperdomain.training.loop import TrainingRun, open_resume
from hyperdomain.training.run_config import RunConfig


pytestmark = pytest.mark.usefixtures("one_thread")  # (conftest)


@pytest.fixture(scope="module")
def random_lpips():
    """LPIPS on its seeded random VGG16 (building the VGG takes seconds: once for the module)."""
    from hyperdomain.image.perceptual import load_lpips

    return load_lpips("cpu", "random")


@dataclass(frozen=True, kw_only=True)
class OTToyConfig(RunConfig):
    command: ClassVar[str] = "ot-toy"
    run: ClassVar[str] = "adapt"  # (its losses are its own)

    iters: int = 8
    sample_every: int = 0
    checkpoint_every: int = 0
    clip: tuple = ("toy",)
    method: str = "not"
    lr: float = 1e-3
    potential_lr: float = 1e-3
    potential_betas: tuple = (0.5, 0.99)


class OTRun(TrainingRun):
    """The common loop driving :func:`not_losses` / :func:`enot_losses` on a sampled problem: the
    shape a translator trainer gives them (one Adam, the map and the potential its two groups)."""

    kind = "ot-toy"

    def __init__(self, G, config, out_dir, T, f, sample_x, sample_y, solver, cost, generator=None):
        super().__init__(G, config, out_dir, rng=generator)
        self.T, self.f, self.sample_x, self.sample_y = T, f, sample_x, sample_y
        self.solver, self.cost = solver, cost
        self.optimizer = one_adam(T, f, config.lr, config.potential_lr, config.betas, config.potential_betas)

    def losses(self):
        c, s = self.config, self.solver
        x = self.sample_x(s.batch)
        if c.method == "enot":
            return enot_losses(self.T, self.f, x, self.sample_y(s.batch), s, self.cost)
        y = None if is_map_step(self.step, s.t_steps) else self.sample_y(s.batch)
        z = not_noise(s, self.step, s.batch, x, self.rng)
        return not_losses(self.T, self.f, x, y, z, self.step, s, self.cost)

    def state_tensors(self):
        return {**{f"map.{k}": v for k, v in self.T.state_dict().items()},
                **{f"potential.{k}": v for k, v in self.f.state_dict().items()}}

    def load_state_tensors(self, tensors):
        self.T.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("map.")})
        self.f.load_state_dict({k[10:]: v for k, v in tensors.items() if k.startswith("potential.")})

    def result(self):
        return {k: v.detach().clone() for k, v in self.state_tensors().items()}


def _gaussian_problem(dim=2, seed=3):
    m1, S1, m2, S2 = random_gaussian_problem(dim, seed)
    return gaussian_sampler(m1, S1), gaussian_sampler(m2, S2)


def _assert_same_params(a: nn.Module, b: nn.Module, moved_from: nn.Module, potential: bool = False):
    """Every parameter equal to float rounding, nearly all of them moved. A potential's output bias is
    skipped: every loss has it as ``f(a) - f(b)``, so its true gradient is 0 and Adam blows up the
    rounding noise it gets (which depends on how the batch is split) into steps of ``lr``."""
    params = list(zip(a.named_parameters(), b.parameters(), moved_from.parameters()))
    if potential:
        params = params[:-1]
    moved = 0
    for (name, p), q, p0 in params:
        moved += not torch.equal(p, p0)
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    assert moved == len(params), "a parameter never moved: the comparison would prove less than it says"


# --- the loop's losses against the solver core -----------------------------------------------------------

@pytest.mark.parametrize("stochastic", [False, True], ids=["deterministic", "weak-cost"])
def test_not_losses_in_the_loop_equal_not_step(tiny_G, stochastic):
    # The solver core: two Adams, t_steps map backwards then one potential backward per not_step. The
    # loop: one Adam with two groups, one backward of "total" per step. Same seeds, same start.
    sx, sy = _gaussian_problem()
    extra = {"noise_shape": (2,), "z_size": 3, "gamma": 0.5, "gamma_warmup_steps": 2} if stochastic else {}
    solver = NOTConfig(lr=1e-3, betas=(0.5, 0.99), t_steps=3, batch=16, **extra)
    torch.manual_seed(0)
    T0 = NoisyMap(mlp(4, 2, 16)) if stochastic else mlp(2, 2, 16)
    f0 = mlp(2, 1, 16)
    potential_steps = 4

    T1, f1 = copy.deepcopy(T0), copy.deepcopy(f0)
    opt_T, opt_f = not_optimizers(T1, f1, solver)
    torch.manual_seed(1)
    core_losses = [not_step(T1, f1, opt_T, opt_f, sx, sy, solver, cost=quadratic_cost, step=k)
                   for k in range(potential_steps)]

    T2, f2 = copy.deepcopy(T0), copy.deepcopy(f0)
    config = OTToyConfig(iters=potential_steps * (solver.t_steps + 1), lr=1e-3, betas=(0.5, 0.99),
                         potential_lr=1e-3, potential_betas=(0.5, 0.99))
    logged = []
    torch.manual_seed(1)
    OTRun(tiny_G, config, None, T2, f2, sx, sy, solver, quadratic_cost).train(
        callback=lambda step, values: logged.append(values), progress=False)

    _assert_same_params(T2, T1, T0)
    _assert_same_params(f2, f1, f0, potential=True)
    per = solver.t_steps + 1
    for k, core in enumerate(core_losses):  # the last map step's loss and the potential's, step by step
        assert logged[k * per + solver.t_steps - 1]["loss_T"] == pytest.approx(core["loss_T"].item(), rel=1e-5)
        assert logged[k * per + solver.t_steps]["loss_f"] == pytest.approx(core["loss_f"].item(), rel=1e-5, abs=1e-6)
        assert "loss_f" not in logged[k * per] and "loss_T" not in logged[k * per + solver.t_steps]
    if stochastic:  # the warm-up clock is the potential step: gamma 0, 0.25, 0.5, 0.5
        assert [logged[k * per]["gamma"] for k in range(potential_steps)] == [0.0, 0.25, 0.5, 0.5]


def test_enot_losses_in_the_loop_equal_enot_step(tiny_G):
    sx, sy = _gaussian_problem()
    solver = ENOTConfig(lr=1e-3, betas=(0.0, 0.9), batch=16, expectile=0.9, expectile_weight=0.7)
    torch.manual_seed(0)
    T0, g0 = mlp(2, 2, 16), mlp(2, 1, 16)
    steps = 6

    T1, g1 = copy.deepcopy(T0), copy.deepcopy(g0)
    opt_T, opt_g = enot_optimizers(T1, g1, solver)
    torch.manual_seed(1)
    core = [enot_step(T1, g1, opt_T, opt_g, sx, sy, solver, cost=quadratic_cost) for _ in range(steps)]

    T2, g2 = copy.deepcopy(T0), copy.deepcopy(g0)
    config = OTToyConfig(iters=steps, method="enot", lr=1e-3, betas=(0.0, 0.9), potential_lr=1e-3,
                         potential_betas=(0.0, 0.9))
    logged = []
    torch.manual_seed(1)
    OTRun(tiny_G, config, None, T2, g2, sx, sy, solver, quadratic_cost).train(
        callback=lambda step, values: logged.append(values), progress=False)

    _assert_same_params(T2, T1, T0)
    _assert_same_params(g2, g1, g0, potential=True)
    assert logged[0]["loss_T"] == pytest.approx(core[0]["loss_T"].item(), rel=1e-6)  # later, g's output bias
    for mine, theirs in zip(logged, core):  # (skipped above) drifts apart and shifts loss_T's value only
        for key in ("loss_g", "expectile_reg"):
            assert mine[key] == pytest.approx(theirs[key].item(), rel=1e-5, abs=1e-7)
        assert mine["total"] == pytest.approx(mine["loss_T"] + mine["loss_g"], rel=1e-6)


def test_a_map_step_leaves_the_potential_and_its_adam_state_alone():
    # Adam skips a parameter without a gradient: the step counter of the other group does not move.
    torch.manual_seed(0)
    T, f = mlp(2, 2, 8), mlp(2, 1, 8)
    opt = one_adam(T, f, 1e-2, 1e-2, (0.9, 0.999), (0.9, 0.999))
    solver = NOTConfig(t_steps=2, batch=4)
    x, y = torch.randn(4, 2), torch.randn(4, 2)
    f_before = [p.clone() for p in f.parameters()]
    for step in range(2):  # two map steps
        opt.zero_grad(set_to_none=True)
        not_losses(T, f, x, None, None, step, solver)["total"].backward()
        assert all(p.grad is None for p in f.parameters()) and all(p.grad is not None for p in T.parameters())
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(f.parameters(), f_before))
    assert all(p not in opt.state for p in f.parameters())
    T_before = [p.clone() for p in T.parameters()]
    opt.zero_grad(set_to_none=True)
    not_losses(T, f, x, y, None, 2, solver)["total"].backward()  # the potential step
    assert all(p.grad is None for p in T.parameters())
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(T.parameters(), T_before))
    assert all(opt.state[p]["step"] == 1 for p in f.parameters())
    assert all(opt.state[p]["step"] == 2 for p in T.parameters())


def test_step_clock_and_noise_shapes():
    assert [is_map_step(k, 2) for k in range(6)] == [True, True, False, True, True, False]
    assert [potential_step(k, 2) for k in range(6)] == [0, 0, 0, 1, 1, 1]
    like = torch.zeros(1)
    c = NOTConfig(t_steps=1, noise_shape=(1, 4, 4), z_size=3, z_std=0.5)
    assert not_noise(c, 0, 2, like).shape == (6, 1, 4, 4)  # a map step: z_size draws per photo
    assert not_noise(c, 1, 2, like).shape == (2, 1, 4, 4)
    assert not_noise(NOTConfig(), 0, 2, like) is None
    z = not_noise(c, 0, 2000, like, torch.Generator().manual_seed(0))
    assert z.std().item() == pytest.approx(0.5, rel=0.02)


# --- images ---------------------------------------------------------------------------------------------

def test_image_potential_gives_one_value_per_image_of_any_size():
    f = ImagePotential(width=4, depth=3)
    for size in (8, 16, 32):
        assert f(torch.randn(5, 3, size, size)).shape == (5,)
    # each value depends on its own image only (no batch statistics)
    a, b = torch.randn(2, 3, 16, 16), torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(f(torch.cat([a, b]))[:2], f(a))


def test_image_costs():
    x, y = torch.rand(2, 3, 8, 8) * 2 - 1, torch.rand(2, 3, 8, 8) * 2 - 1
    torch.testing.assert_close(image_cost("l2")(x, y), (x - y).square().mean((1, 2, 3)))
    with pytest.raises(HyperdomainError, match=r"^--cost 'l1': not a transport cost; use one of l2, lpips$"):
        image_cost("l1")
    with pytest.raises(HyperdomainError, match="--cost lpips needs"):
        image_cost("lpips")


def test_lpips_cost_is_per_image_lpips(random_lpips):
    from hyperdomain.image.perceptual import lpips_distance

    lpips = random_lpips
    x, y = torch.rand(3, 3, 32, 32) * 2 - 1, torch.rand(3, 3, 32, 32) * 2 - 1
    d = image_cost("lpips", lpips)(x, y)
    assert d.shape == (3,) and (d > 0).all()
    torch.testing.assert_close(d[1:], lpips_distance(lpips, x[1:], y[1:]))
    assert image_cost("lpips", lpips)(x, x).abs().max() < 1e-6


class ResidualMap(nn.Module):
    """``x + conv(x)``, starting at the identity: a tiny image translator."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 3, 3, padding=1))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, x):
        return x + self.net(x)


SHIFT = torch.tensor([0.5, -0.1, -0.4]).view(1, 3, 1, 1)


def _images(n, generator):
    """Smooth random 16 px images: a random colour plus a low-frequency pattern."""
    base = torch.rand(n, 3, 1, 1, generator=generator) - 0.5
    pattern = nn.functional.interpolate(torch.randn(n, 3, 4, 4, generator=generator) * 0.2, size=16,
                                        mode="bilinear", align_corners=False)
    return base + pattern


@pytest.mark.parametrize("method", ["not", "enot"])
def test_unpaired_training_moves_photos_to_a_colour_shifted_domain(tiny_G, method):
    # "Photos" and "domain images" are independent draws; the domain's are colour-shifted. The map
    # never sees a pair, yet the mean colour of T(photos) must approach the domain's, which the
    # identity (the map's start) misses by the whole shift. (Checked on seeds 0-3 with these
    # settings: colour error 0.08-0.22 of the shift, the potential's early gap 0.18-0.6.)
    gen = torch.Generator().manual_seed(0)
    sample_x = lambda n: _images(n, gen)  # noqa: E731
    sample_y = lambda n: _images(n, gen) + SHIFT  # noqa: E731
    torch.manual_seed(0)
    T, f = ResidualMap(), ImagePotential(width=8, depth=2)
    if method == "not":
        solver, iters = NOTConfig(t_steps=3, batch=32), 320
    else:
        solver, iters = ENOTConfig(batch=32, expectile=0.99, expectile_weight=1.0), 160
    config = OTToyConfig(iters=iters, method=method, lr=3e-3, betas=(0.0, 0.9), potential_lr=3e-3,
                         potential_betas=(0.0, 0.9))
    test_x = _images(256, torch.Generator().manual_seed(99))
    test_y = _images(256, torch.Generator().manual_seed(98)) + SHIFT
    gaps = {}  # E f(domain) - E f(T(photos)) on held-out images, every 8 steps

    def watch(step, values):
        if step % 8 == 0:
            with torch.no_grad():
                gaps[step] = (f(test_y).mean() - f(T(test_x)).mean()).item()

    OTRun(tiny_G, config, None, T, f, sample_x, sample_y, solver, mean_squared_cost).train(
        callback=watch, progress=False)

    with torch.no_grad():
        moved = T(test_x).mean((0, 2, 3)) - test_x.mean((0, 2, 3))
    error = (moved - SHIFT.flatten()).norm().item()
    assert error < 0.35 * SHIFT.norm().item(), f"mean colour moved by {moved.tolist()}, want {SHIFT.flatten().tolist()}"
    # the potential first learns to rank the domain above the (barely moved) photos; by the end the
    # map has closed that gap
    early = max(gaps[8], gaps[16])
    assert early > 0.1 and abs(gaps[iters]) < 0.5 * early, gaps
    # the map's cost stays moderate: it moves the colour, it does not replace the image
    with torch.no_grad():
        kept = (T(test_x) - SHIFT - test_x).square().mean().item()
    assert kept < 0.35 * SHIFT.square().mean().item() + 0.01


@pytest.mark.parametrize("method", ["not", "enot"])
def test_exact_resume(tmp_path, tiny_G, method):
    # every draw (photos, domain images, noise) from the run's RNG, which checkpoints keep
    solver = NOTConfig(t_steps=2, batch=8, noise_shape=(2,), z_size=2, gamma=0.3) if method == "not" else \
        ENOTConfig(batch=8)

    def run(iters, out, resume=False):
        torch.manual_seed(0)
        T = NoisyMap(mlp(4, 2, 8)) if method == "not" else mlp(2, 2, 8)
        f = mlp(2, 1, 8)
        rng = torch.Generator().manual_seed(7)
        sx, sy = (lambda n: torch.randn(n, 2, generator=rng) + 1), (lambda n: torch.randn(n, 2, generator=rng) * 2)
        if resume:
            tensors, meta, config = open_resume(out, "ot-toy", OTToyConfig, tiny_G, iters)
        else:
            config = OTToyConfig(iters=iters, method=method)
        r = OTRun(tiny_G, config, out, T, f, sx, sy, solver, quadratic_cost, rng)
        if resume:
            r.restore(tensors, meta)
        return r.train(progress=False)

    straight = run(7, None)
    run(4, tmp_path / "r")  # NOT: stops inside its second potential step (t_steps + 1 = 3 loop steps each)
    resumed = run(7, tmp_path / "r", resume=True)
    assert straight.keys() == resumed.keys()
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    four = run(4, None)
    assert any(not torch.equal(four[k], straight[k]) for k in straight)  # the last 3 steps did move things


# --- data -----------------------------------------------------------------------------------------------

def test_photo_folder_errors_are_one_line(tmp_path):
    from hyperdomain.image.translators.ot_data import photo_files

    (tmp_path / "notes.txt").write_text("no image")
    with pytest.raises(HyperdomainError, match=r"^--photos .*: no images in it \(\.png, .*\)$"):
        photo_files(tmp_path)
    with pytest.raises(HyperdomainError, match=r"^--photos .*missing: no such folder; give a folder of photos$"):
        photo_files(tmp_path / "missing")
    with pytest.raises(HyperdomainError, match=r"not a folder"):
        photo_files(tmp_path / "notes.txt")


def test_photos_are_read_once_and_drawn_by_the_rng(tmp_path, tiny_G):
    from PIL import Image

    from hyperdomain.image.translators.ot_data import load_photos, photo_batch

    colours = [(255, 0, 0), (0, 0, 255)]
    for i, c in enumerate(colours):
        Image.new("RGB", (48, 40), c).save(tmp_path / f"p{i}.png")
    photos = load_photos(tiny_G, tmp_path, 16, align=False)
    assert photos.shape == (2, 3, 16, 16) and photos.dtype == torch.uint8
    assert photos[0, 0].min() == 255 and photos[1, 2].min() == 255 and photos[0, 2].max() == 0
    a = photo_batch(photos, 5, torch.Generator().manual_seed(1))
    b = photo_batch(photos, 5, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (5, 3, 16, 16) and a.min() == -1 and a.max() == 1


def test_domain_images_are_rendered_from_the_rng(tiny_G):
    from hyperdomain.image.translators.ot_data import domain_batch

    d = torch.randn(tiny_G.num_domain_params) * 0.5
    a = domain_batch(tiny_G, d, 3, torch.Generator().manual_seed(4), truncation=0.7, size=16)
    b = domain_batch(tiny_G, d, 3, torch.Generator().manual_seed(4), truncation=0.7, size=16)
    assert a.shape == (3, 3, 16, 16) and torch.equal(a, b)
    source = domain_batch(tiny_G, None, 3, torch.Generator().manual_seed(4), truncation=0.7, size=16)
    assert (a - source).abs().mean() > 1e-3  # the domain changes the renders
    rng = torch.Generator().manual_seed(4)
    z = torch.randn(3, tiny_G.z_dim, generator=rng)
    full = tiny_G.synthesis(tiny_G.mapping(z, truncation=0.7), domain=d, noise=tiny_G.draw_noise(3, rng))
    full32 = domain_batch(tiny_G, d, 3, torch.Generator().manual_seed(4), truncation=0.7)
    torch.testing.assert_close(full32, full.clamp(-1, 1))


# --- evaluation -----------------------------------------------------------------------------------------

def test_psnr_and_direction_alignment_by_hand():
    from hyperdomain.image.translators.evaluation import direction_alignment, psnr

    a = torch.zeros(2, 3, 4, 4)
    b = a.clone()
    b[1] += 10 / 127.5  # 10 levels of 8 bits everywhere: PSNR = 20 log10(255 / 10)
    p = psnr(a, b)
    assert p[0] == pytest.approx(10 * torch.log10(torch.tensor(255.0**2 / 1e-10)).item())
    assert p[1] == pytest.approx(20 * torch.log10(torch.tensor(25.5)).item(), abs=1e-4)
    e_in = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    e_out = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, -2.0]])
    cos = direction_alignment(e_out, e_in, torch.tensor([0.0, 1.0, 1.0]))
    torch.testing.assert_close(cos, torch.tensor([2 ** -0.5, -(2 ** -0.5)], dtype=torch.float64))


class _PerfectTranslator:
    """A stand-in Translator that renders the truth for the held-out sources it is given (it knows G's
    latents by their order) and otherwise adds a colour shift: metrics with answers known in advance."""

    def __init__(self, config, table):
        self.config, self.table, self.calls = config, table, 0

    def __call__(self, images, seed=None):
        for src, dst in self.table:
            if images.shape == src.shape and torch.allclose(images, src, atol=1e-5):
                return dst
        return (images + 0.2).clamp(-1, 1)


def test_translator_metrics_on_tiny_models(tiny_G, tiny_clip, random_lpips):
    from hyperdomain.image.translators import TranslatorConfig, build_translator
    from hyperdomain.image.translators.evaluation import format_translator_table, translator_metrics
    from hyperdomain.image.translators.files import Translator

    lpips = random_lpips
    d = torch.randn(tiny_G.num_domain_params) * 0.5
    config = TranslatorConfig(size=32, encoder="tu-resnet10t", encoder_depth=3, decoder_channels=(16, 16, 8))
    identity = Translator(build_translator(config), config, "enot")  # a new translator is the identity
    photos = torch.rand(3, 3, 32, 32) * 2 - 1
    rows = translator_metrics(tiny_G, identity, d, tiny_clip, lpips, photos=photos, n=4, batch_size=2)
    assert [(r.road, r.inputs) for r in rows] == [("translator", "generated"), ("translator", "photos")]
    gen, ph = rows
    assert gen.lpips_to_input < 1e-3 and gen.lpips_to_truth > 1e-3  # the identity keeps the source, misses the domain
    assert math.isnan(gen.clip_direction) and math.isnan(ph.lpips_to_truth)
    assert ph.lpips_to_input < 1e-3 and ph.direction == "image" and ph.images_per_s > 0
    assert abs(ph.clip_direction) < 1.0001

    # a translator that hits the truth exactly: PSNR at its cap, LPIPS 0; the row is reproducible
    gen_seed = torch.Generator().manual_seed(1_000_003)
    z = torch.randn(4, tiny_G.z_dim, generator=gen_seed)
    ws = tiny_G.mapping(z, 0.7)
    table = [(tiny_G.synthesis(ws[i:i + 2], noise_mode="const").clamp(-1, 1),
              tiny_G.synthesis(ws[i:i + 2], domain=d, noise_mode="const").clamp(-1, 1)) for i in (0, 2)]
    perfect = _PerfectTranslator(config, table)
    rows = translator_metrics(tiny_G, perfect, d, tiny_clip, lpips, photos=photos, n=4, batch_size=2,
                              prompt="a sketch", source_prompt="a photo")
    assert rows[0].lpips_to_truth < 1e-6 and rows[0].psnr_to_truth > 99
    assert rows[1].direction == "text"
    # the photo row's direction figure is the mean cosine computed here by hand
    from hyperdomain.image.translators.evaluation import direction_alignment

    direction = tiny_clip.text("a sketch", ("{}",)) - tiny_clip.text("a photo", ("{}",))
    expect = direction_alignment(tiny_clip.encode_images((photos + 0.2).clamp(-1, 1)), tiny_clip.encode_images(photos),
                                 direction).mean().item()
    assert rows[1].clip_direction == pytest.approx(expect, abs=1e-5)
    assert "translator" in format_translator_table(rows)


@pytest.mark.slow
def test_translator_metrics_compare_inversion(tiny_G, tiny_clip, random_lpips):
    from hyperdomain.image.inversion import InversionConfig
    from hyperdomain.image.translators import TranslatorConfig, build_translator
    from hyperdomain.image.translators.evaluation import translator_metrics
    from hyperdomain.image.translators.files import Translator

    lpips = random_lpips
    d = torch.randn(tiny_G.num_domain_params) * 0.5
    config = TranslatorConfig(size=32, encoder="tu-resnet10t", encoder_depth=3, decoder_channels=(16, 16, 8))
    photos = tiny_G.sample(2, truncation=0.7, seed=5).clamp(-1, 1)  # photos the generator can make
    inv = InversionConfig(steps=3, pca_samples=64, loss_size=32)
    rows = translator_metrics(tiny_G, Translator(build_translator(config), config, "not"), d, tiny_clip, lpips,
                              photos=photos, n=2, batch_size=2, compare_inversion=inv)
    assert [r.road for r in rows] == ["translator", "translator", "inversion"]
    inversion = rows[2]
    assert inversion.n == 2 and inversion.images_per_s > 0 and math.isfinite(inversion.clip_direction)
    assert inversion.lpips_to_input > 1e-4  # rendered with the domain: not the photo


def test_evaluate_translator_command(tmp_path, tiny_ckpt, tiny_clip_config):
    from PIL import Image

    import hyperdomain as hd
    from hyperdomain.image.translators import TranslatorConfig, build_translator, save_translator
    from tests.conftest import assert_user_error, cli

    ckpt, _ = tiny_ckpt
    G = hd.load_generator(ckpt, device="cpu")
    domain = tmp_path / "sketch.safetensors"
    hd.Domain(torch.randn(G.num_domain_params) * 0.3, G.domain_dims, {"prompt": "Sketch"}).save(domain)
    config = TranslatorConfig(size=32, encoder="tu-resnet10t", encoder_depth=3, decoder_channels=(16, 16, 8))
    torch.manual_seed(0)
    translator = save_translator(tmp_path / "t.safetensors", build_translator(config), config, "enot",
                                 {"fingerprint": G.fingerprint, "name": G.name}, "d" * 16)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy()).save(photos / f"{i}.png")
    base = ("evaluate", "--generator", ckpt, "--translator", translator, "--clip", tiny_clip_config,
            "--lpips-vgg", "random", "-n", 2, "--device", "cpu", "--batch-size", 2)
    r = cli(*base, "--domain", domain, "--photos", photos, "--compare-inversion", "--steps", 2, "--pca-samples", 16,
            "-o", tmp_path / "t.json")
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "t.json").read_text())
    assert [(x["road"], x["inputs"]) for x in rows] == [("translator", "generated"), ("translator", "photos"),
                                                        ("inversion", "photos")]
    assert rows[1]["direction"] == "text" and rows[1]["n"] == 2 and rows[0]["clip_direction"] is None
    assert rows[1]["lpips_to_input"] < 1e-3  # a new translator is the identity
    assert "images/s" in r.stdout
    assert_user_error(cli(*base), "exactly one --domain")
    assert_user_error(cli(*base, "--domain", domain, "--photos", tmp_path / "none"), "--photos", "no such folder")
    assert_user_error(cli("evaluate", "--generator", ckpt, "--domain", domain, "--compare-inversion"),
                      "give --translator FILE")
    assert_user_error(cli(*base, "--domain", domain, "--compare-inversion"), "give --photos DIR")


# --- the translator trainer's unpaired methods ---------------------------------------------------------

TINY_NET = dict(size=32, encoder="tu-resnet10t", encoder_depth=3, decoder_channels=(16, 16, 8))


def _photo_dir(path, n=3, seed=0):
    from PIL import Image

    path.mkdir()
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        Image.fromarray((torch.rand(32, 32, 3, generator=g) * 255).byte().numpy()).save(path / f"p{i}.png")
    return path


def _domain(G, scale=0.3):
    import hyperdomain as hd

    torch.manual_seed(1)
    return hd.Domain(torch.randn(G.num_domain_params) * scale, G.domain_dims, {"prompt": "Sketch"})


@pytest.mark.parametrize("method, extra", [("not", dict(t_steps=1, noise_channels=1, gamma=0.5, z_size=2)),
                                           ("enot", dict())], ids=["not-weak", "enot"])
def test_translator_train_resumes_exactly(tmp_path, tiny_G, method, extra):
    from hyperdomain.files.run_checkpoints import CHECKPOINT, load_checkpoint
    from hyperdomain.training.translator import train_translator

    photos = _photo_dir(tmp_path / "photos")
    domain = _domain(tiny_G)
    common = dict(method=method, photos=str(photos), batch=2, lpips_backbone="random", sample_every=0,
                  checkpoint_every=0, **TINY_NET, **extra)
    train_translator(tiny_G, domain, iters=5, out_dir=tmp_path / "straight", progress=False, **common)
    train_translator(tiny_G, domain, iters=3, out_dir=tmp_path / "split", progress=False, **common)
    train_translator(tiny_G, domain, iters=5, resume=tmp_path / "split", progress=False)
    a, meta = load_checkpoint(tmp_path / "straight" / CHECKPOINT, "translator")
    b, _ = load_checkpoint(tmp_path / "split" / CHECKPOINT, "translator")
    assert any(k.startswith("potential.") for k in a) and any(k.startswith("map.") for k in a)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert meta["step"] == 5
    log = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    if method == "not":  # t_steps 1: map, potential, map, potential, map
        assert ["loss_T" in r for r in log] == [True, False, True, False, True]
    else:
        assert all("expectile_reg" in r for r in log)
    (photos / "p0.png").unlink()  # other photos: the run cannot go on as itself
    with pytest.raises(HyperdomainError, match=r"the photos in .* changed since the run began \(3 then, 2 now"):
        train_translator(tiny_G, domain, iters=6, resume=tmp_path / "split", progress=False)


def test_translator_train_ot_bad_input_is_one_line(tmp_path, tiny_G):
    from hyperdomain.training.translator import train_translator

    empty = tmp_path / "empty"
    empty.mkdir()
    photos = _photo_dir(tmp_path / "photos")
    domain = _domain(tiny_G)
    base = dict(batch=2, lpips_backbone="random", progress=False, **TINY_NET)
    cases = [
        (dict(method="not", photos=str(empty)), "no images in it"),
        (dict(method="enot"), "give the photos to translate from (--photos DIR)"),
        (dict(method="not", photos=str(photos), cost="l1"), "--cost 'l1': not a transport cost; use one of l2, lpips"),
        (dict(method="not", photos=str(photos), gamma=-1.0), "--gamma must be >= 0"),
        (dict(method="not", photos=str(photos), gamma=0.5), "needs a stochastic map"),
        (dict(method="enot", photos=str(photos), gamma=0.5), "ENOT's map is deterministic"),
        (dict(method="paired", photos=str(photos)), "--photos is for --method not|enot"),
    ]
    for options, fragment in cases:
        with pytest.raises(HyperdomainError) as e:
            train_translator(tiny_G, domain, iters=1, **base, **options)
        assert fragment in str(e.value) and "\n" not in str(e.value), (options, str(e.value))


def test_translator_train_command_not_and_enot(tmp_path, tiny_ckpt):
    import hyperdomain as hd
    from hyperdomain.image.translators import load_translator
    from tests.conftest import assert_user_error, cli

    ckpt, _ = tiny_ckpt
    G = hd.load_generator(ckpt, device="cpu")
    domain = tmp_path / "sketch.safetensors"
    _domain(G).save(domain)
    photos = _photo_dir(tmp_path / "photos")
    base = ("translator", "train", "-g", ckpt, "--domain", domain, "--size", 32, "--encoder", "tu-resnet10t",
            "--batch", 2, "--iters", 3, "--lpips-vgg", "random", "--no-progress", "--device", "cpu")
    r = cli(*base, "--method", "not", "--photos", photos, "--t-steps", 1, "--noise-channels", 1, "--gamma", 0.3,
            "--z-size", 2, "--potential-width", 8, "--out", tmp_path / "not")
    assert r.exit_code == 0, r.output
    t = load_translator(tmp_path / "not" / "translator.safetensors", generator=G)
    assert t.method == "not" and t.config.noise_channels == 1
    config = json.loads((tmp_path / "not" / "config.json").read_text())
    assert config["gamma"] == 0.3 and config["t_steps"] == 1 and config["photos"] == str(photos.absolute())
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(cli(*base, "--method", "enot", "--photos", empty, "--out", tmp_path / "e1"), "--photos",
                      "no images in it")
    assert_user_error(cli(*base, "--method", "enot", "--photos", photos, "--cost", "l1", "--out", tmp_path / "e2"),
                      "--cost")
    assert_user_error(cli(*base, "--method", "not", "--photos", photos, "--gamma", -1, "--out", tmp_path / "e3"),
                      "--gamma")
    assert_user_error(cli(*base, "--method", "enot", "--out", tmp_path / "e4"), "--photos DIR")
    assert not any((tmp_path / f"e{i}").exists() for i in range(1, 5))


@pytest.mark.slow
def test_not_and_enot_under_torchrun_keep_the_ranks_equal(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    root = Path(__file__).resolve().parents[1]
    photos = _photo_dir(tmp_path / "photos", n=4)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(root / "tests" / "ddp_translator_ot_worker.py"), str(photos), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for method in ("not", "enot"):
        r0, r1 = (load_file(str(tmp_path / method / f"rank{r}.safetensors")) for r in (0, 1))
        assert any(k.startswith("potential.") for k in r0)
        for k in r0:
            if "running_" in k:  # BatchNorm statistics are each rank's own on the CPU (no SyncBatchNorm)
                continue
            assert torch.equal(r0[k], r1[k]), (method, k)
        assert (tmp_path / method / "translator.safetensors").is_file()


@pytest.mark.slow
def test_sigterm_and_a_non_finite_loss_keep_the_potential(tmp_path, tiny_G, monkeypatch):
    import os
    import signal

    import hyperdomain.training.translator as translator_module
    from hyperdomain.files.run_checkpoints import CHECKPOINT, load_checkpoint
    from hyperdomain.training.run_dir import RunInterrupted
    from hyperdomain.training.translator import train_translator
    photos = _photo_dir(tmp_path / "photos")
    domain = _domain(tiny_G)
    common = dict(photos=str(photos), batch=2, sample_every=0, checkpoint_every=0, progress=False, **TINY_NET)

    def stop_at_2(step, values):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # handled at the next step boundary

    with pytest.raises(RunInterrupted):
        train_translator(tiny_G, domain, method="enot", iters=10, out_dir=tmp_path / "term", callback=stop_at_2,
                         **common)
    tensors, meta = load_checkpoint(tmp_path / "term" / CHECKPOINT, "translator")
    assert meta["step"] == 2 and any(k.startswith("potential.") for k in tensors)
    assert train_translator(tiny_G, domain, resume=tmp_path / "term", iters=3, progress=False).meta["iterations"] == 3

    calls = []

    def poisoned(run):  # the third step's loss is NaN
        calls.append(run.step)
        parts = translator_module.not_run_losses(run)
        return {**parts, "total": parts["total"] * float("nan")} if len(calls) == 3 else parts

    monkeypatch.setitem(translator_module.METHOD_LOSSES, "not", poisoned)
    with pytest.raises(HyperdomainError, match="step 3: loss is not finite") as e:
        train_translator(tiny_G, domain, method="not", t_steps=1, iters=6, out_dir=tmp_path / "nan", **common)
    assert "\n" not in str(e.value)
    tensors, meta = load_checkpoint(tmp_path / "nan" / CHECKPOINT, "translator")
    assert meta["step"] == 1 and any(k.startswith("potential.") for k in tensors)
