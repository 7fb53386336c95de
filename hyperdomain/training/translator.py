"""Training a translator: a U-Net that maps a photo (a source image) into a domain in one pass.

``train_translator(G, domain)`` learns from (source, domain) pairs of the frozen generator
rendered on the fly; ``train_translator(None, "pixar", pairs="DATASET_DIR")`` from a
``hyperdomain dataset`` folder. It returns a :class:`Translator`; with ``out_dir`` the run keeps
the common loop's folder (log, samples, checkpoints, resume, Ctrl-C/SIGTERM saves, the non-finite
stop) and writes ``translator.safetensors``.

A step's global batch of pairs is drawn from a generator seeded by (seed, step): a resumed run
draws what an uninterrupted one would (bit-exact on the CPU), with any number of processes, and
under ``torchrun`` each rank takes its share of the global batch. The methods: ``paired`` (L1 + LPIPS to the domain's image, optionally CLIP's
direction: the output's change from the source aligned with the true image's); ``not`` and
``enot`` (optimal transport from unpaired photos) add their losses to :data:`METHOD_LOSSES`. One
Adam trains every module in ``run.trained`` (the map; a potential network goes into a second
parameter group), and every module's state is in each checkpoint.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from .._version import __version__
from ..distributed import DistInfo, broadcast_buffers, local_batch
from ..errors import HyperdomainError
from ..files.run_checkpoints import CHECKPOINT, read_checkpoint_meta
from ..guidance.losses import Embeddings, LossWeights, StepImages, compute_losses, default_weights
from ..image.translators.files import METHODS, Translator, save_translator
from ..image.translators.network import TranslatorConfig, build_translator, translator_input
from ..media.grids import save_grid
from ..model.domain import Domain
from .dashboards import require
from .loop import StopFlag, TrainingRun, open_resume
from .run_config import RunConfig
from .run_dir import refuse_existing_run
from .translator_ot import (OT_METHODS, check_ot_config, check_ot_resume, enot_run_losses, not_run_losses,
                           ot_checkpoint_meta, ot_setup, ot_shown)
from .translator_pairs import DatasetPairs, RenderedPairs, pair_seed

__all__ = ["TranslatorTrainConfig", "train_translator", "read_translator_config", "METHOD_LOSSES", "METHOD_SETUP",
           "paired_losses", "TRANSLATOR_FILE"]

TRANSLATOR_FILE = "translator.safetensors"
Callback = Callable[[int, Mapping[str, float]], Any]


@dataclass(frozen=True, kw_only=True)
class TranslatorTrainConfig(RunConfig):
    """Everything that defines a translator run (stored in its checkpoint).

    ``domain``: the domain file (pairs rendered by the generator) or the dataset's domain name
    (``pairs``); ``domain_digest`` what a resume checks. The network's fields are
    :class:`TranslatorConfig`'s. The NOT/ENOT fields (``photos`` ... ``potential_lr``) are read by
    those methods only.
    """

    command: ClassVar[str] = "translator train"
    run: ClassVar[str] = "translator"
    loss_scope: ClassVar[str] = "a paired translator"

    method: str = "paired"
    domain: str | None = None
    domain_digest: str | None = None
    pairs: str | None = None  # a dataset folder (absolute); None: pairs rendered by the generator
    truncation: float = 0.7  # of the rendered pairs
    size: int = 256
    encoder: str = "tu-resnet18"
    encoder_depth: int = 4
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16)
    noise_channels: int = 0
    residual: bool = True
    lpips_backbone: str = "imagenet"  # LPIPS's VGG16: "imagenet", its weights file, or "random" (tests)
    iters: int = 2000
    batch: int = 8
    lr: float = 5e-4
    losses: LossWeights = field(default_factory=lambda: default_weights("translator"))
    sample_every: int = 200
    checkpoint_every: int = 200
    # NOT / ENOT (unpaired photos to the domain), read by those methods' losses (training/translator_ot.py)
    photos: str | None = None  # the photos' folder (absolute)
    cost: str = "l2"  # "l2" (mean squared pixels) or "lpips"
    gamma: float = 0.0  # NOT's weak cost (needs noise_channels); 0: the strong cost
    gamma_warmup: int = 0  # NOT potential steps over which gamma rises from 0
    z_size: int = 4  # NOT's draws of T(x, z) per photo in the weak cost
    t_steps: int = 10  # NOT's map updates per potential update
    expectile: float = 0.99  # ENOT's tau
    expectile_weight: float = 1.0
    potential_lr: float | None = None  # None: lr
    potential_width: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "decoder_channels", tuple(self.decoder_channels))
        super().__post_init__()
        if self.method not in METHODS:
            raise HyperdomainError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not 0 <= self.truncation <= 2:
            raise HyperdomainError(f"{self.command}: truncation must be in [0, 2], got {self.truncation}")
        self.network()  # one line for a bad size, encoder depth, widths
        check_ot_config(self)

    def network(self) -> TranslatorConfig:
        """The network's config."""
        return TranslatorConfig(size=self.size, encoder=self.encoder, encoder_depth=self.encoder_depth,
                                decoder_channels=self.decoder_channels, noise_channels=self.noise_channels,
                                residual=self.residual)


# ------------------------------------------------------------------------------------------- losses
def paired_losses(run: "_TranslatorRun") -> dict[str, torch.Tensor]:
    """L1 and LPIPS of the map's output to the domain's image of the same source, and optionally
    CLIP's ``direction``: the output's change from the source aligned with the true change."""
    c = run.config
    x, y = run.pairs.batch(c.seed, run.step, c.batch, run.dist.rank, run.dist.world)
    noise = torch.Generator().manual_seed(pair_seed(c.seed, run.step) ^ (run.dist.rank + 1))
    out = run.map(translator_input(x, c.noise_channels, noise))
    images = StepImages(torch.zeros(0), (), rec=out, ref=y,
                        lpips=None if run.lpips is None else (lambda a, b: _lpips(run.lpips, a, b)))

    def per_encoder():
        for enc in run.encoders:
            with torch.no_grad():
                src, trg = enc.encode_images(x), enc.encode_images(y)
            yield Embeddings(src, enc.encode_images(out), direction=trg - src)

    return compute_losses(c.losses.as_dict(), per_encoder(), images)


def _lpips(model, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    from ..image.perceptual import lpips_distance

    return lpips_distance(model, a, b)


# what a step of each method computes (NOT and ENOT add theirs)
METHOD_LOSSES: dict[str, Callable[["_TranslatorRun"], dict[str, torch.Tensor]]] = {
    "paired": paired_losses, "not": not_run_losses, "enot": enot_run_losses}
# what a method adds to a new run before its first step (NOT and ENOT: the photos, and the potential
# network in ``run.trained`` and a second parameter group of ``run.optimizer``); paired adds nothing
METHOD_SETUP: dict[str, Callable[["_TranslatorRun"], None]] = {"not": ot_setup, "enot": ot_setup}


# ------------------------------------------------------------------------------------------- the run
def train_translator(G, domain: Domain | str | None = None, *, method: str = "paired",
                     pairs: str | os.PathLike | None = None, size: int | None = None, iters: int | None = None,
                     batch: int | None = None, lr: float | None = None,
                     losses: LossWeights | Mapping[str, float] | None = None, seed: int | None = None,
                     out_dir: str | os.PathLike | None = None, resume: str | os.PathLike | None = None,
                     callback: Callback | None = None, progress: bool = True, stop: StopFlag | None = None,
                     dist: DistInfo | None = None, lpips: torch.nn.Module | None = None, clip=None,
                     device: str | torch.device | None = None, config: TranslatorTrainConfig | None = None,
                     **options: Any) -> Translator:
    """Train a translator into ``domain``; returns it (eval mode).

    Pairs: rendered by generator ``G`` in the source and in ``domain`` (a :class:`Domain`), or read
    from the dataset folder ``pairs`` (``domain``: the name of one of its domains; ``G`` may be None,
    the dataset names its generator). Further :class:`TranslatorTrainConfig` fields (``encoder``,
    ``decoder_channels``, ``sample_every``, ``lpips_backbone``, ...) go in ``options``. ``lpips``: a
    loaded LPIPS module (else loaded from ``lpips_backbone`` when the ``lpips`` loss is on); ``clip``:
    CLIP encoders or specs for the ``direction`` loss. ``resume=DIR`` continues the run in ``DIR``
    (its settings; ``iters`` may extend it; an in-memory domain is given again).
    """
    state = None
    if resume is not None:
        extra = {k for k, v in dict(options, size=size, batch=batch, lr=lr, losses=losses, seed=seed,
                                    pairs=pairs, config=config).items() if v is not None}
        if extra:
            raise HyperdomainError(f"resume keeps the run's settings; drop {sorted(extra)}")
        out_dir = Path(resume)
        facts = G if G is not None else _dataset_facts(out_dir, device)
        tensors, meta, config = open_resume(out_dir, "translator", TranslatorTrainConfig, facts, iters)
        state = (tensors, meta)
    else:
        if clip is not None:  # the models passed in define the run (and are recorded in its config)
            from ..guidance.clip import run_spec

            options = {**options, "clip": tuple(run_spec(c) for c in clip)}
        config = _config(config, method, domain, pairs, options,
                         dict(size=size, iters=iters, batch=batch, lr=lr, losses=losses, seed=seed), G)
    source = _pairs(G, domain, config, device)
    if G is None:
        G = source.facts(device or "cpu")
    elif config.pairs is not None and source.generator["generator_fingerprint"] != G.fingerprint:
        raise HyperdomainError(f"--pairs {config.pairs}: the dataset was made by generator "
                               f"{source.generator['generator']!r} (fingerprint "
                               f"{source.generator['generator_fingerprint']}), not {G.name!r} (fingerprint "
                               f"{G.fingerprint})")
    if config.domain_digest is not None and source.domain["digest"] != config.domain_digest:
        raise HyperdomainError(f"--resume {out_dir}: the run was trained into domain {config.domain!r} (digest "
                               f"{config.domain_digest}), not into this one (digest {source.domain['digest']})")
    config = replace(config, domain_digest=source.domain["digest"])
    out = Path(out_dir) if out_dir is not None else None
    if state is None:  # on every rank, before DDP's first collective
        refuse_existing_run(out, _TranslatorRun.kind)
    require(config.dashboards)
    run = _TranslatorRun(G, config, source, out, dist or DistInfo(device=G.device), lpips, clip)
    if state is not None:
        check_ot_resume(run, state[1], out_dir)
        run.restore(*state)
    return run.train(callback, progress, stop)


def read_translator_config(run_dir: str | os.PathLike) -> TranslatorTrainConfig:
    """The config of the translator run saved in ``run_dir``."""
    return TranslatorTrainConfig.from_dict(read_checkpoint_meta(Path(run_dir) / CHECKPOINT, "translator")["config"])


def _config(config, method, domain, pairs, options, given, G) -> TranslatorTrainConfig:
    unknown = set(options) - {f.name for f in fields(TranslatorTrainConfig)}
    if unknown:
        raise HyperdomainError(f"train_translator: unknown options {sorted(unknown)}")
    settings = {k: v for k, v in {**given, **options}.items() if v is not None}
    if settings.get("photos") is not None:
        settings["photos"] = str(Path(settings["photos"]).absolute())
    if pairs is not None:
        settings["pairs"] = str(Path(pairs).absolute())
        if domain is not None and not isinstance(domain, str):
            raise HyperdomainError("train_translator: with pairs=DATASET, domain is the name of one of its domains")
        settings["domain"] = domain
    elif isinstance(domain, Domain):
        settings["domain"] = str(Path(domain.meta["file"]).absolute()) if domain.meta.get("file") else None
    elif method == "paired":
        raise HyperdomainError("train_translator: give the domain (a Domain) with a generator, or pairs=DATASET_DIR")
    if G is not None and "generator" not in settings and getattr(G, "name", None):
        settings["generator"] = G.name
    base = config if config is not None else TranslatorTrainConfig()  # (checked once, with its method, below)
    return replace(base, method=method, **settings)


def _dataset_facts(run_dir: Path, device):
    """The generator facts of a run trained from a dataset (its config names the folder)."""
    config = read_translator_config(run_dir)
    if config.pairs is None:
        raise HyperdomainError(f"--resume {run_dir}: the run's pairs were rendered by a generator; give it (-g)")
    return DatasetPairs(Path(config.pairs), config.domain, config.size).facts(device or "cpu")


def _pairs(G, domain, config: TranslatorTrainConfig, device):
    if config.pairs is not None:
        return DatasetPairs(Path(config.pairs), config.domain, config.size,
                            device or (G.device if G is not None else "cpu"))
    if G is None:
        raise HyperdomainError("train_translator: pairs rendered on the fly need the generator (-g)")
    if domain is None and config.domain is not None:
        domain = Domain.load(config.domain, generator=G)
    if not isinstance(domain, Domain):
        raise HyperdomainError("train_translator: give the domain the pairs are rendered in (a domain file)")
    return RenderedPairs(G, domain, config.size, config.truncation)


class _TranslatorRun(TrainingRun):
    """A translator run: the map (DDP under torchrun), one Adam, draws seeded by (seed, step)."""

    kind = "translator"
    desc = "translator"

    def __init__(self, G, config: TranslatorTrainConfig, pairs, out_dir: Path | None, dist: DistInfo,
                 lpips: torch.nn.Module | None = None, clip=None):
        c = config
        if c.method not in METHOD_LOSSES:
            raise HyperdomainError(f"--method {c.method}: not available in this version (it has "
                                   f"{', '.join(METHOD_LOSSES)})")
        self.local_batch = local_batch(c.batch, dist.world)
        if hasattr(G, "eval"):
            G.eval().requires_grad_(False)
        super().__init__(G, config, out_dir, dist)
        self.pairs = pairs
        self.desc = f"translator {c.method}"
        self.net_config = c.network()
        with torch.random.fork_rng(devices=[]):  # the caller's RNG stays as it was
            torch.manual_seed(c.seed)  # the same initial network on every rank
            self.net = build_translator(self.net_config).to(dist.device).train()
        self.trained: dict[str, torch.nn.Module] = {"map": self.net}  # every module a checkpoint keeps
        self.map = self.net
        if dist.active:
            if dist.device.type == "cuda":
                self.net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
                self.trained["map"] = self.net
            # an encoder's stages past encoder_depth are built but unused (segmentation-models-pytorch)
            self.map = DDP(self.net, device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
                           find_unused_parameters=True)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=c.lr, betas=c.betas)
        self.lpips = lpips
        if self.lpips is None and c.losses.lpips and c.method == "paired":
            from ..image.perceptual import load_lpips

            self.lpips = load_lpips(dist.device, c.lpips_backbone)
        self.encoders = []
        if c.losses.direction and c.method == "paired":
            from ..guidance.clip import check_models, load_clip

            self.encoders = load_clip(clip if clip is not None else c.clip, device=dist.device)
            check_models(self.encoders, c.clip)
        self._shown: tuple[torch.Tensor, torch.Tensor] | None = None
        if c.method in METHOD_SETUP:
            METHOD_SETUP[c.method](self)

    def losses(self) -> dict[str, torch.Tensor]:
        return METHOD_LOSSES[self.config.method](self)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"{name}.{k}": v for name, m in self.trained.items() for k, v in m.state_dict().items()}

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        for name, module in self.trained.items():
            own = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
            try:
                module.load_state_dict(own, strict=True)
            except RuntimeError as e:
                raise HyperdomainError(f"checkpoint {name} network does not fit ({str(e).splitlines()[0]})") from None

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"world": self.dist.world, **ot_checkpoint_meta(self)}

    def result(self) -> Translator:
        broadcast_buffers(self.dist, self.net)  # every rank returns the same network
        net = copy.deepcopy(self.net).eval()
        if isinstance(net, torch.nn.Module) and self.dist.active and self.dist.device.type == "cuda":
            net = _plain_batchnorm(net)
        c = self.config
        meta = {"iterations": self.step, "seed": c.seed, "batch": c.batch, "lr": c.lr, "losses": c.losses.as_dict(),
                "pairs": c.pairs, "truncation": c.truncation, "trainer": "translator train",
                "hyperdomain_version": __version__}
        generator = {"name": self.G.name, "fingerprint": self.G.fingerprint, "resolution": self.G.resolution}
        return Translator(net, self.net_config, c.method, meta, generator, self.pairs.domain)

    def write_outputs(self, result: Translator) -> None:
        save_translator(self.out_dir / TRANSLATOR_FILE, result, result.config, result.method, result.generator,
                        result.domain, result.meta)

    def stop_outputs(self) -> None:
        self.write_outputs(self.result())

    def save_samples(self, path: Path) -> None:
        c = self.config
        if self._shown is None:  # the same pairs every time
            self._shown = ot_shown(self) if c.method in OT_METHODS else self.pairs.batch(c.seed, -1, c.sample_n)
        x, y = self._shown
        was = self.net.training
        self.net.eval()
        with torch.no_grad():
            out = self.net(translator_input(x, c.noise_channels, torch.Generator().manual_seed(c.seed)))
        self.net.train(was)
        save_grid(torch.cat([x, out, y]).cpu(), path, nrow=c.sample_n)


def _plain_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """SyncBatchNorm layers back to BatchNorm2d (a translator runs in one process)."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.SyncBatchNorm):
            bn = torch.nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                      child.track_running_stats).to(child.weight.device)
            bn.load_state_dict(child.state_dict())
            setattr(module, name, bn)
        else:
            _plain_batchnorm(child)
    return module
