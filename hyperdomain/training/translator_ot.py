"""The translator trainer's unpaired methods: NOT and ENOT from the user's photos to the domain.

``translator train --method not|enot --photos DIR`` transports the photos of ``DIR`` (prepared as
inversion prepares them: aligned for face generators) to the domain's images (rendered per step by
the frozen generator with the domain, or the domain's images of a dataset with ``--pairs``), with
no pairs. :func:`ot_setup` adds the potential network (:class:`ImagePotential`) to the run: to the
checkpointed modules (``potential.*``) and as the second param group of the loop's one Adam; the
step's losses are :func:`~hyperdomain.image.translators.image_ot.not_losses` /
:func:`~hyperdomain.image.translators.image_ot.enot_losses` (see that module for how a map step and
a potential step share the loop). Every draw of a step (photos, domain images, NOT's noise) comes
from a generator seeded by (seed, step, rank), so a resumed run is the uninterrupted one.
"""
from __future__ import annotations

from typing import Any

import hashlib
from pathlib import Path

import torch

from ..errors import HyperdomainError
from ..image.translators.enot_solver import ENOTConfig
from ..image.translators.image_ot import COSTS, ImagePotential, enot_losses, image_cost, is_map_step, not_losses, \
    not_noise
from ..image.translators.neural_ot import NOTConfig
from ..image.translators.ot_data import load_photos, photo_batch

__all__ = ["OT_METHODS", "check_ot_config", "ot_setup", "not_run_losses", "enot_run_losses", "ot_checkpoint_meta",
           "check_ot_resume"]

OT_METHODS = ("not", "enot")
_POTENTIAL_SEED = 0x5EED_F00D  # the potential's initial weights: apart from the map's (seed itself)


def check_ot_config(c: Any) -> None:
    """One line for a NOT/ENOT setting that cannot work (called by the config for every method)."""
    if c.method not in OT_METHODS:
        if c.photos is not None:
            raise HyperdomainError(f"--photos is for --method not|enot (unpaired photos), not {c.method}")
        return
    flag = f"--method {c.method}"
    if not c.photos:
        raise HyperdomainError(f"{flag}: give the photos to translate from (--photos DIR)")
    if c.cost not in COSTS:
        raise HyperdomainError(f"--cost {c.cost!r}: not a transport cost; use one of {', '.join(COSTS)}")
    if not c.gamma >= 0:
        raise HyperdomainError(f"--gamma must be >= 0 (0: NOT's strong cost), got {c.gamma}")
    if c.method == "enot":
        if c.gamma:
            raise HyperdomainError("--gamma is NOT's weak cost; ENOT's map is deterministic (use --method not)")
        if c.noise_channels:
            raise HyperdomainError("--noise-channels: ENOT's map is deterministic; noise is for NOT's weak cost")
    elif c.gamma and not c.noise_channels:
        raise HyperdomainError(f"--gamma {c.gamma} needs a stochastic map: give --noise-channels (1 or more)")
    checks = [(c.t_steps >= 1, "--t-steps", "an integer >= 1"), (0 < c.expectile < 1, "--expectile", "in (0, 1)"),
              (c.expectile_weight >= 0, "--expectile-weight", ">= 0"),
              (c.potential_lr is None or 0 < c.potential_lr <= 1000, "--potential-lr", "in (0, 1000]"),
              (c.potential_width >= 1, "--potential-width", ">= 1"),
              (not c.gamma or c.z_size >= 2, "--z-size", ">= 2 with --gamma (the weak cost compares draws)")]
    for ok, name, expected in checks:
        if not ok:
            value = getattr(c, name[2:].replace("-", "_"))
            raise HyperdomainError(f"{name} must be {expected}, got {value!r}")


def solver_config(c: Any) -> NOTConfig | ENOTConfig:
    """The solver's hyper-parameters of a run config (its lr, betas and batch are the loop's)."""
    if c.method == "enot":
        return ENOTConfig(expectile=c.expectile, expectile_weight=c.expectile_weight)
    noise = (c.noise_channels, c.size, c.size) if c.noise_channels else None
    # z ~ N(0, 1): the noise translator_input (and so a Translator) feeds the network
    return NOTConfig(t_steps=c.t_steps, gamma=c.gamma, gamma_warmup_steps=c.gamma_warmup, noise_shape=noise,
                     z_size=c.z_size, z_std=1.0)


def ot_setup(run: Any) -> None:
    """Give a NOT/ENOT run its photos, potential (checkpointed, in the Adam's second group), cost and solver."""
    c = run.config
    run.photos = load_photos(run.G, c.photos, c.size)
    run.photos_digest = hashlib.sha256(run.photos.numpy().tobytes()).hexdigest()[:16]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(c.seed ^ _POTENTIAL_SEED)  # the same potential on every rank
        run.potential = ImagePotential(3, c.potential_width).to(run.dist.device)
    run.trained["potential"] = run.potential
    run.potential_forward = run.potential
    if run.dist.active:
        from torch.nn.parallel import DistributedDataParallel as DDP

        device_ids = [run.dist.device.index] if run.dist.device.type == "cuda" else None
        run.potential_forward = DDP(run.potential, device_ids=device_ids)
    run.optimizer.add_param_group({"params": list(run.potential.parameters()),
                                   "lr": c.potential_lr if c.potential_lr is not None else c.lr, "betas": c.betas})
    if c.cost == "lpips" and run.lpips is None:
        from ..image.perceptual import load_lpips

        run.lpips = load_lpips(run.dist.device, c.lpips_backbone)
    run.ot_cost = image_cost(c.cost, run.lpips)
    run.solver = solver_config(c)


def ot_checkpoint_meta(run: Any) -> dict[str, Any]:
    """What a NOT/ENOT checkpoint records besides the common state: the photos' digest (as prepared)."""
    if run.config.method not in OT_METHODS:
        return {}
    return {"photos_digest": run.photos_digest, "photos_count": int(run.photos.shape[0])}


def check_ot_resume(run: Any, meta: Any, run_dir: Any) -> None:
    """A resumed NOT/ENOT run must draw from the photos it began with: one line when they changed."""
    if run.config.method not in OT_METHODS:
        return
    recorded = meta.get("photos_digest")
    if recorded is not None and recorded != run.photos_digest:
        raise HyperdomainError(f"--resume {Path(run_dir)}: the photos in {run.config.photos} changed since the run "
                               f"began ({meta.get('photos_count')} then, {run.photos.shape[0]} now, or other pixels); "
                               f"start a new run")


def ot_shown(run: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The sample grid's rows for NOT/ENOT: the first photos (translated in the grid's middle row) and
    domain images, the same at every sample."""
    n = run.config.sample_n
    index = torch.arange(n) % run.photos.shape[0]
    x = (run.photos[index].float() / 127.5 - 1).to(run.dist.device)
    return x, _domain_images(run, torch.Generator().manual_seed(run.config.seed), n, step=0).to(run.dist.device)


def _map(run: Any):
    c = run.config
    if not c.noise_channels:
        return run.map
    return lambda x, z: run.map(torch.cat([x, z], 1))


def _draws(run: Any) -> torch.Generator:
    """This rank's draws of step ``run.step`` (photos, noise, domain images): its own stream."""
    from ..datasets.latents import stream_seed

    return torch.Generator().manual_seed(stream_seed(run.config.seed, run.step, f"translator-ot/{run.dist.rank}"))


def _domain_images(run: Any, gen: torch.Generator, n: int, step: int | None = None) -> torch.Tensor:
    """``n`` domain images: rendered by the generator (only the domain's side of the pairs), else
    the domain's images of the dataset."""
    pairs = run.pairs
    if hasattr(pairs, "table"):  # RenderedPairs: the domain's row of its table
        from ..image.translators.ot_data import domain_batch

        return domain_batch(pairs.G, pairs.table[1], n, gen, pairs.truncation, pairs.size)
    seed = int(torch.randint(0, 2**62, (), generator=gen))
    return pairs.batch(seed, run.step if step is None else step, n)[1]  # (the seed is already this rank's)


def not_run_losses(run: Any) -> dict[str, torch.Tensor]:
    """Loop step ``run.step`` of NOT: a map step, or (each ``t_steps + 1``-th) a potential step."""
    s, n, dev = run.solver, run.local_batch, run.dist.device
    gen = _draws(run)
    x = photo_batch(run.photos, n, gen, dev)
    y = None if is_map_step(run.step, s.t_steps) else _domain_images(run, gen, n).to(dev)
    z = not_noise(s, run.step, n, x, gen)
    if y is None:
        return not_losses(_map(run), run.potential, x, None, z, run.step, s, run.ot_cost)
    return not_losses(_map(run), run.potential_forward, x, y, z, run.step, s, run.ot_cost)


def enot_run_losses(run: Any) -> dict[str, torch.Tensor]:
    """One ENOT step: the map and the potential both move."""
    gen = _draws(run)
    x = photo_batch(run.photos, run.local_batch, gen, run.dist.device)
    y = _domain_images(run, gen, run.local_batch).to(run.dist.device)
    return enot_losses(_map(run), run.potential_forward, x, y, run.solver, run.ot_cost, frozen=run.potential)
