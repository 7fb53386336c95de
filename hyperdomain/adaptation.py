"""Text-driven adaptation: train one domain vector of a frozen generator against CLIP losses.

``adapt(G, target="3D render in the style of Pixar")`` returns a :class:`Domain`. With ``out_dir``
the run also writes sample grids, a log, resumable checkpoints (every ``checkpoint_every`` steps
and on Ctrl-C) and the final domain file; ``adapt(G, resume=out_dir)`` continues such a run and,
on the CPU, gives exactly the result of an uninterrupted one.

Faithful to the paper's single-domain trainer (Adam lr 0.1, 300 steps, batch 4, style mixing
with probability 0.9 and one crossover per batch, truncation 1, random noise, source images
without grad, losses summed over the CLIP ensemble; the source and adapted passes share z but
draw their own crossover and noise, see :func:`sample_training_latents`). One deliberate
difference: a run takes exactly ``iters`` steps (the paper's loop takes ``iters + 1``).
"""
from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from .clip import DEFAULT_CLIP, ClipEncoder, load_clip, templates
from .domain import Domain, generator_meta
from .errors import HyperdomainError
from .losses import LossWeights, clip_losses
from .train_state import CHECKPOINT, open_resume, refuse_existing_run

log = logging.getLogger(__name__)

__all__ = ["AdaptConfig", "adapt", "read_adapt_config", "adapt_step", "sample_training_latents", "CHECKPOINT", "DOMAIN_FILE"]

DOMAIN_FILE = "domain.safetensors"
Callback = Callable[[int, Mapping[str, float], torch.Tensor], Any]


@dataclass(frozen=True)
class AdaptConfig:
    """Everything that defines a single-domain run (stored in its checkpoint and domain file)."""

    target: str
    source: str = "Photo"
    clip: tuple[str, ...] = DEFAULT_CLIP
    iters: int = 300
    batch: int = 4
    lr: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    losses: LossWeights = field(default_factory=LossWeights)
    mixing: float = 0.9
    templates: str = "imagenet"
    seed: int = 0
    sample_every: int = 50
    checkpoint_every: int = 50
    sample_n: int = 6
    sample_truncation: float = 0.7
    clip_antialias: bool = False
    clip_precision: str = "auto"  # autocast for CLIP: auto (fp16 on CUDA, fp32 on CPU), fp32, fp16, bf16
    generator: str | None = None  # the name or path the generator was loaded from (for resume)

    def __post_init__(self) -> None:
        from .train_state import check_run_config

        check_run_config(self, "adapt", [(self.batch >= 1, "batch", "an integer >= 1")])
        if self.losses.tt_direction:
            raise HyperdomainError("--loss tt_direction needs several domains per batch (train-hyper); not for adapt")
        if not (self.losses.direction or self.losses.global_):
            raise HyperdomainError("--loss: direction or global must be > 0, or the target prompt plays no part "
                                   "(e.g. --loss direction=1 --loss indomain=0.5)")
        if self.losses.indomain and self.batch < 2:
            raise HyperdomainError("--loss indomain needs --batch of at least 2")
        for what, prompt in (("--target", self.target), ("--source", self.source)):
            if not isinstance(prompt, str) or not prompt.strip():
                raise HyperdomainError(f"{what}: empty prompt")
        if self.target.strip() == self.source.strip():
            raise HyperdomainError(f"--target and --source are the same prompt ({self.target!r}): no direction to learn")

    def to_dict(self) -> dict[str, Any]:
        from .train_state import run_config_to_dict

        return run_config_to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AdaptConfig":
        from .train_state import run_config_from_dict

        return run_config_from_dict(cls, d, "adapt")


# ------------------------------------------------------------------------------------------ a step
@dataclass
class TrainingBatch:
    """One step's inputs: W+ and noise for the source pass and for the adapted pass."""

    ws_src: torch.Tensor  # [B, num_ws, w_dim]
    ws_trg: torch.Tensor
    noise_src: list[torch.Tensor]
    noise_trg: list[torch.Tensor]


@torch.no_grad()
def sample_training_latents(G, rng: torch.Generator, batch: int, mixing: float,
                            device: torch.device) -> TrainingBatch:
    """One step's latents and noise, all drawn from ``rng`` on the CPU (the paper's scheme).

    Both passes start from the same ``z`` (and, with probability ``mixing``, the same second
    ``z``), but each draws its own crossover in ``[1, num_ws - 1]`` (one per batch) and its own
    noise, as the paper's code does. This keeps the image direction ``E(G_d) - E(G)`` away from
    zero at ``d = 0``: identical passes would make it rounding noise, whose huge gradient
    (about 1/|direction|) would fill Adam's second moment for hundreds of steps. Truncation is 1.
    """
    z1 = torch.randn(batch, G.z_dim, generator=rng)
    mix = bool(torch.rand((), generator=rng) < mixing)
    w1 = G.mapping(z1.to(device))
    if mix:
        z2 = torch.randn(batch, G.z_dim, generator=rng)
        w2 = G.mapping(z2.to(device))
        cross = torch.randint(1, G.num_ws, (2,), generator=rng).tolist()
        ws_src, ws_trg = G.style_mix(w1, w2, cross[0]), G.style_mix(w1, w2, cross[1])
    else:
        ws_src = ws_trg = w1[:, None, :].expand(-1, G.num_ws, -1)
    return TrainingBatch(ws_src, ws_trg, G.draw_noise(batch, rng, device), G.draw_noise(batch, rng, device))


def adapt_step(G, encoders: Sequence[ClipEncoder], domain: torch.Tensor, batch: TrainingBatch,
               texts: Sequence[Mapping[str, torch.Tensor]], weights: LossWeights) -> dict[str, torch.Tensor]:
    """The losses of one step (``"total"`` and each active loss summed over the encoders).

    ``texts[i]`` holds encoder ``i``'s ``"target"`` embedding and ``"direction"`` (target minus
    source). Source images and their embeddings are computed without grad.
    """
    with torch.no_grad():
        src_img = G.synthesis(batch.ws_src, noise=batch.noise_src)
        src_emb = [enc.encode_images(src_img) for enc in encoders]
    trg_img = G.synthesis(batch.ws_trg, domain=domain, noise=batch.noise_trg)
    per_encoder = ((se, enc.encode_images(trg_img), t["direction"], t["target"])
                   for enc, se, t in zip(encoders, src_emb, texts))
    return clip_losses(weights.as_dict(), per_encoder, domain, G.domain_dims)


# ------------------------------------------------------------------------------------------ the run
def adapt(G, target: str | None = None, source: str | None = None, *,
          clip: Sequence[str | ClipEncoder] | None = None, iters: int | None = None, batch: int | None = None,
          lr: float | None = None, losses: LossWeights | Mapping[str, float] | None = None, mixing: float | None = None,
          seed: int = 0, out_dir: str | os.PathLike | None = None, resume: str | os.PathLike | None = None,
          callback: Callback | None = None, progress: bool = True, config: AdaptConfig | None = None,
          **options: Any) -> Domain:
    """Adapt frozen generator ``G`` to the domain ``target`` describes; returns the trained Domain.

    ``clip`` takes spec strings (``"ViT-B-32"``, ``"ViT-B/16=weights.safetensors"``) or loaded
    :class:`ClipEncoder` objects (default: ViT-B/32 + ViT-B/16). ``losses`` maps loss names to
    weights (default ``{"direction": 1}``). ``callback(step, losses, domain_vector)`` runs after
    every step. Further :class:`AdaptConfig` fields (``sample_every``, ``checkpoint_every``,
    ``templates``, ...) go in ``options``, or pass a whole ``config``.

    ``resume=DIR`` continues the run saved in ``DIR`` (its config is used; ``iters`` may extend it).

    Settings left as ``None`` come from the generator's manifest recipe (``G.adapt_defaults``: the
    paper's settings for that dataset, e.g. LSUN cat: batch 8, lr 0.02, 400 steps, direction +
    0.5 l2), else from the paper's FFHQ defaults (300 steps, batch 4, lr 0.1, direction).
    """
    if resume is not None:
        return _resume(G, Path(resume), clip, iters, callback, progress)
    if config is None:
        if target is None:
            raise HyperdomainError("adapt: give a target prompt (or resume=DIR)")
        clip_specs = tuple(c.label if isinstance(c, ClipEncoder) else str(c) for c in (clip or DEFAULT_CLIP))
        recipe = dict(getattr(G, "adapt_defaults", None) or {})

        def pick(name: str, given, fallback):
            return given if given is not None else recipe.get(name, fallback)

        given = {"iters": iters, "batch": batch, "lr": lr, "losses": losses, "mixing": mixing,
                 "betas": options.get("betas")}
        from_recipe = {k: v for k, v in recipe.items() if given.get(k) is None}  # named in errors
        losses = pick("losses", losses, None)
        lw = losses if isinstance(losses, LossWeights) else (
            LossWeights.from_mapping(losses) if losses else LossWeights())
        if "betas" in recipe:
            options.setdefault("betas", tuple(recipe["betas"]))
        try:
            config = AdaptConfig(target=target, source=source or getattr(G, "source_prompt", "Photo"),
                                 clip=clip_specs, iters=pick("iters", iters, 300), batch=pick("batch", batch, 4),
                                 lr=pick("lr", lr, 0.1), losses=lw, mixing=pick("mixing", mixing, 0.9), seed=seed,
                                 **options)
        except HyperdomainError as e:
            if not from_recipe:
                raise
            raise HyperdomainError(f"{e} (generator {G.name!r} brings the paper's recipe {from_recipe}; "
                                   f"options you give override it)") from None
    encoders = _encoders(clip, config, G.device)
    run = _Run(G, encoders, config, Path(out_dir) if out_dir is not None else None)
    refuse_existing_run(run.out_dir)
    return run.train(callback, progress)


def _encoders(clip, config: AdaptConfig, device) -> list[ClipEncoder]:
    from .clip import check_models

    encoders = load_clip(clip if clip is not None else config.clip, device=device,
                         antialias=config.clip_antialias, precision=config.clip_precision)
    check_models(encoders, config.clip)
    return encoders


def read_adapt_config(run_dir: str | os.PathLike) -> AdaptConfig:
    """The config of the run saved in ``run_dir`` (its checkpoint)."""
    from .train_state import read_checkpoint_meta

    return AdaptConfig.from_dict(read_checkpoint_meta(Path(run_dir) / CHECKPOINT, "adapt")["config"])


def _resume(G, run_dir: Path, clip, iters, callback, progress) -> Domain:
    tensors, meta, config = open_resume(run_dir, "adapt", AdaptConfig, G, iters)
    encoders = _encoders(clip, config, G.device)
    run = _Run(G, encoders, config, run_dir)
    run.restore(tensors, meta)
    return run.train(callback, progress)


class _Run:
    """One run's state and its files; ``train`` is the loop."""

    def __init__(self, G, encoders: list[ClipEncoder], config: AdaptConfig, out_dir: Path | None):
        G.eval().requires_grad_(False)  # frozen: the domain vector is the only trained tensor
        self.G, self.encoders, self.config, self.out_dir = G, encoders, config, out_dir
        self.device = G.device
        tpl = templates(config.templates)
        self.texts = []
        for enc in encoders:
            t_trg = enc.text(config.target, tpl, what="--target")
            t_src = enc.text(config.source, tpl, what="--source")
            self.texts.append({"target": t_trg, "direction": t_trg - t_src})
        self.domain = torch.zeros(G.num_domain_params, device=self.device, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.domain], lr=config.lr, betas=config.betas)
        self.rng = torch.Generator().manual_seed(_training_seed(config.seed))
        self.step = 0
        self.saved_step: int | None = None  # the step of the last checkpoint this run wrote
        self._source_row: torch.Tensor | None = None  # the sample grids' first row, made once
        trainable = [n for n, p in list(G.named_parameters()) + [(f"clip.{n}", p) for e in encoders
                     for n, p in e.named_parameters()] if p.requires_grad]
        assert not trainable, f"frozen models have trainable parameters: {trainable[:5]}"

    # ------------------------------------------------------------------ state
    def restore(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        from .train_state import restore_optimizer

        if tensors["domain"].shape != self.domain.shape:
            raise HyperdomainError(f"checkpoint domain has {tensors['domain'].numel()} numbers, generator needs "
                                   f"{self.domain.numel()}")
        with torch.no_grad():
            self.domain.copy_(tensors["domain"])
        restore_optimizer(self.optimizer, tensors, meta)
        self.rng.set_state(tensors["rng"])
        self.step = int(meta["step"])

    def save_checkpoint(self, rng_state: torch.Tensor) -> Path | None:
        if self.out_dir is None:
            return None
        from .train_state import save_checkpoint

        meta = {"config": self.config.to_dict(), "step": self.step, **generator_meta(self.G)}
        path = save_checkpoint(self.out_dir / CHECKPOINT, "adapt", {"domain": self.domain, "rng": rng_state}, meta,
                               self.optimizer)
        self.saved_step = self.step
        return path

    def to_domain(self) -> Domain:
        from . import __version__

        c = self.config
        meta = {**generator_meta(self.G), "prompt": c.target, "source_prompt": c.source,
                "clip_models": [e.label for e in self.encoders], "losses": c.losses.as_dict(),
                "iterations": self.step, "seed": c.seed, "lr": c.lr, "batch": c.batch, "mixing": c.mixing,
                "templates": c.templates, "clip_precision": c.clip_precision, "trainer": "adapt",
                "hyperdomain_version": __version__}
        return Domain(self.domain.detach().cpu().clone(), self.G.domain_dims, meta)

    def save_samples(self, name: str) -> Path | None:
        if self.out_dir is None:
            return None
        from .images import save_grid

        c = self.config
        if self._source_row is None:  # the same seeds every time: the source row never changes
            self._source_row = self.G.sample(c.sample_n, truncation=c.sample_truncation, seed=c.seed)
        trg = self.G.sample(c.sample_n, domain=self.domain.detach(), truncation=c.sample_truncation, seed=c.seed)
        return save_grid(torch.cat([self._source_row, trg]), self.out_dir / name, nrow=c.sample_n)

    def log_line(self, values: Mapping[str, float]) -> None:
        if self.out_dir is not None:
            from .train_state import append_log

            append_log(self.out_dir, self.step, values)

    def _prepare_dir(self) -> None:
        if self.out_dir is not None:
            from .train_state import prepare_run_dir

            prepare_run_dir(self.out_dir, self.config.to_dict(), self.step)

    # ------------------------------------------------------------------ loop
    def train(self, callback: Callback | None, progress: bool) -> Domain:
        from tqdm import tqdm

        from .train_state import deferred_interrupt

        c = self.config
        self._prepare_dir()
        bar = tqdm(total=c.iters, initial=self.step, desc=f"adapt {c.target[:30]!r}", unit="step",
                   disable=not progress or None, dynamic_ncols=True)
        self._step_start_rng = self.rng.get_state()  # the RNG state the current step started from
        self._updating = False  # True while the optimizer update of a step is under way
        try:
            with deferred_interrupt() as interrupted:
                while self.step < c.iters:
                    if interrupted.is_set():
                        raise KeyboardInterrupt
                    values = self._one_step(self._step_start_rng)
                    self.step += 1
                    self._step_start_rng = self.rng.get_state()
                    self._updating = False
                    self.log_line(values)
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.4f}" for k, v in values.items()}, refresh=False)
                    if callback is not None:
                        callback(self.step, values, self.domain.detach())
                    if c.sample_every and self.step % c.sample_every == 0 and self.step < c.iters:
                        self.save_samples(f"samples/step_{self.step:06d}.png")
                    if c.checkpoint_every and self.step % c.checkpoint_every == 0:
                        self.save_checkpoint(self.rng.get_state())
        except KeyboardInterrupt:
            # a hard interrupt (second Ctrl-C) can land inside a step: before its update the state is
            # still the step's start; during the update it may be torn, so the last checkpoint stays
            if not self._updating:
                path = self.save_checkpoint(self._step_start_rng)
                if path is not None:
                    log.warning("interrupted at step %d/%d; saved %s (resume with adapt(G, resume=%r))",
                                self.step, c.iters, path, str(self.out_dir))
            raise
        finally:
            bar.close()
        domain = self.to_domain()
        if self.out_dir is not None:
            if self.saved_step != self.step:  # not already written by the loop's last step
                self.save_checkpoint(self.rng.get_state())
            domain.save(self.out_dir / DOMAIN_FILE)
            self.save_samples("samples.png")
        return domain

    def _one_step(self, rng_state: torch.Tensor) -> dict[str, float]:
        c = self.config
        batch = sample_training_latents(self.G, self.rng, c.batch, c.mixing, self.device)
        parts = adapt_step(self.G, self.encoders, self.domain, batch, self.texts, c.losses)
        values = {k: float(v.detach()) for k, v in parts.items()}
        if not math.isfinite(values["total"]):
            self._stop_non_finite(rng_state, f"loss is {values['total']} ({_fmt(values)})")
        self.optimizer.zero_grad(set_to_none=True)
        parts["total"].backward()
        if not bool(torch.isfinite(self.domain.grad).all()):
            self._stop_non_finite(rng_state, "the gradient of the domain vector is not finite")
        self._updating = True
        self.optimizer.step()
        return values

    def _stop_non_finite(self, rng_state: torch.Tensor, why: str) -> None:
        """Keep the last good state (the one this step started from) and stop with one line."""
        where = ""
        if self.out_dir is not None:
            self.save_checkpoint(rng_state)
            self.to_domain().save(self.out_dir / DOMAIN_FILE)
            where = f"; the last good state (step {self.step}) is in {self.out_dir}"
        raise HyperdomainError(f"step {self.step + 1}: {why}; stopped{where}. Try a new run with a lower --lr")


def _training_seed(seed: int) -> int:
    """The training RNG's seed: apart from ``seed`` itself, which the sample grids use."""
    return (int(seed) * 0x9E3779B1 + 0x7F4A7C15) % (2**63)


def _fmt(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in values.items() if k != "total")


def slug(prompt: str, limit: int = 40) -> str:
    """A folder name for a prompt: ``"3D render in the style of Pixar"`` -> ``3d_render_in_the_style_of_pixar``."""
    s = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")
    return s[:limit].rstrip("_") or "domain"
