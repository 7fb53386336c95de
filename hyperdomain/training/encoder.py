"""Training a photo encoder (e4e or ReStyle) for a generator that has none.

Each step renders a batch from the frozen generator: ``z`` mapped to ``w`` (with probability
``mixing`` two codes crossed over at a random layer per sample: W+), rendered with the constant
noise the encoder's users render with. The W+ is known, so besides the reconstruction losses of e4e
(MSE and LPIPS between the render and the reconstruction, at ``loss_size``) a ``latent`` loss ties
the predicted W+ to the true one. ``delta_norm`` is e4e's delta regulariser: the L2 norm of each
layer's code minus the first layer's, averaged over the batch, summed over the layers that have a
code of their own (``progressive_every`` steps per further layer, as e4e trains; 0: all at once).

Given ``photos`` (a folder), a ``photo_fraction`` of the steps trains on a batch of those photos
instead, with the reconstruction losses only (their W+ is unknown); they are prepared as the image
side prepares photos (aligned for face generators, else centre-cropped) and held in memory at the
loss size.

ReStyle kinds train as ReStyle's coach does: ``n_iters`` passes per batch, the first from the
average latent and its image, each later one reading the previous reconstruction and latent
detached; every pass has its losses and their sum is the step's (the coach's backward per pass
accumulates the same gradients).

Draws come from a generator seeded by (seed, step, rank): a checkpoint needs no RNG state and a
resumed run equals an uninterrupted one on the CPU. Under ``torchrun`` the global ``batch`` is
split over the ranks and the network runs under DDP (SyncBatchNorm on GPUs), as in ``train_hyper``.
The run folder gets ``encoder.safetensors`` (:func:`~hyperdomain.image.encoders.save_encoder`,
with the generator's fingerprint), the checkpoint and sample grids (rows: targets, reconstructions;
then photos and theirs).
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from .._version import __version__
from ..distributed import DistInfo, broadcast_buffers, local_batch
from ..errors import HyperdomainError
from ..files.kinds import IMAGE_SUFFIXES
from ..files.run_checkpoints import CHECKPOINT, read_checkpoint_meta
from ..image.encoders import EncoderConfig, PhotoEncoder, encode, pool_render, save_encoder
from ..image.encoders.config import MAX_INPUT_SIZE, PHOTO_CHANNELS, RELEASE_UNITS, RELEASE_WIDTHS
from ..image.perceptual import load_lpips, lpips_distance
from ..media.grids import save_grid
from ..model.config import check_config_keys
from ..model.domain import generator_meta
from .dashboards import require
from .hyper import _seed_for
from .loop import Callback, StopFlag, TrainingRun, open_resume
from .run_config import RunConfig
from .run_dir import refuse_existing_run

__all__ = ["EncoderLosses", "EncoderTrainConfig", "train_encoder", "read_encoder_train_config", "photo_files",
           "ENCODER_FILE"]

ENCODER_FILE = "encoder.safetensors"


@dataclass(frozen=True)
class EncoderLosses:
    """The weights of the encoder's losses (0: off). Defaults: e4e's (``l2`` 1, ``lpips`` 0.8,
    ``delta_norm`` 2e-4) and ``latent`` 1 (renders only: MSE of the predicted W+ to the true one)."""

    latent: float = 1.0
    l2: float = 1.0
    lpips: float = 0.8
    delta_norm: float = 2e-4

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise HyperdomainError(f"--loss {f.name}: weight must be a number, got {v!r}") from None
            if not (0 <= v < math.inf):
                raise HyperdomainError(f"--loss {f.name}: weight must be a finite number >= 0, got {v}")
            object.__setattr__(self, f.name, v)
        if not (self.latent or self.l2 or self.lpips):
            raise HyperdomainError("--loss: latent, l2 or lpips must be > 0, or nothing ties the encoder to the images")

    @classmethod
    def from_mapping(cls, weights: Mapping[str, Any]) -> "EncoderLosses":
        """From ``{"l2": 1, "lpips": 0.8}``: names not given keep their default."""
        known = [f.name for f in fields(cls)]
        for name in weights:
            if name not in known:
                raise HyperdomainError(f"--loss {name}: not a loss of encoder training; it uses {', '.join(known)}")
        return cls(**dict(weights))

    @classmethod
    def parse(cls, items: Iterable[str]) -> "EncoderLosses":
        """From CLI items ``["lpips=0", "latent=2"]``."""
        pairs = {}
        for item in items:
            name, sep, value = str(item).partition("=")
            if not sep or not name.strip():
                raise HyperdomainError(f"--loss {item!r}: expected NAME=WEIGHT, e.g. lpips=0.8 or latent=1")
            pairs[name.strip()] = value.strip()
        return cls.from_mapping(pairs)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class EncoderTrainConfig(RunConfig):
    """Everything that defines an encoder run (stored in its checkpoint). ``input_size``: the side
    the encoder reads (None: the generator's, at most 256); ``n_iters``: ReStyle's passes (None: 5;
    1 for e4e); ``widths``/``units``: the backbone's sizes (default IR-SE50's, see
    :class:`~hyperdomain.image.encoders.EncoderConfig`). ``clip`` and ``templates`` (shared by every
    run's config) play no part here."""

    command: ClassVar[str] = "train-encoder"
    run: ClassVar[str] = "encoder"

    kind: str = "e4e"
    iters: int = 100_000
    batch: int = 8
    lr: float = 1e-4
    losses: EncoderLosses = field(default_factory=EncoderLosses)
    mixing: float = 0.5
    input_size: int | None = None
    n_iters: int | None = None
    widths: tuple[int, ...] = RELEASE_WIDTHS
    units: tuple[int, ...] = RELEASE_UNITS
    progressive_every: int = 0  # e4e's progressive training: one more layer's delta every N steps (0: all)
    photos: str | None = None  # a folder of real photos (reconstruction losses only)
    photo_fraction: float = 0.5  # the share of steps that train on the photos, when given
    align: bool | None = None  # photos aligned as faces (None: for face generators)
    loss_size: int = 256
    lpips_backbone: str = "imagenet"  # LPIPS's VGG16: "imagenet", its weights file, or "random" (tests)
    sample_every: int = 1000
    checkpoint_every: int = 1000

    def __post_init__(self) -> None:
        if isinstance(self.losses, Mapping):
            object.__setattr__(self, "losses", EncoderLosses.from_mapping(self.losses))
        for name in ("widths", "units"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        super().__post_init__()
        try:  # the encoder's own checks, with the generator's sizes still unknown (n_styles, w_dim)
            self.encoder_config(n_styles=1, w_dim=1)
        except HyperdomainError as e:
            raise HyperdomainError(f"{self.command}: {e}") from None
        if self.photos is not None and (not isinstance(self.photos, str) or not self.photos.strip()):
            raise HyperdomainError(f"{self.command}: --photos {self.photos!r}: expected a folder")

    def check_losses(self) -> None:
        if not isinstance(self.losses, EncoderLosses):
            raise HyperdomainError(f"{self.command}: losses must be encoder loss weights, got {self.losses!r}")

    def checks(self) -> list[tuple[bool, str, str]]:
        return [(self.batch >= 2, "batch", ">= 2 (BatchNorm)"),
                (self.progressive_every >= 0, "progressive_every", ">= 0 (0: off)"),
                (0 < self.photo_fraction <= 1, "photo_fraction", "in (0, 1]"),
                (self.loss_size >= 8, "loss_size", ">= 8")]

    def encoder_config(self, n_styles: int, w_dim: int, resolution: int = MAX_INPUT_SIZE) -> EncoderConfig:
        """The encoder this run trains, for a generator of ``n_styles`` W+ layers of ``w_dim``."""
        iterative = self.kind.startswith("restyle-")
        n_iters = self.n_iters if self.n_iters is not None else (5 if iterative else 1)
        size = self.input_size if self.input_size is not None else min(MAX_INPUT_SIZE, resolution)
        return EncoderConfig(self.kind, n_styles, 2 * PHOTO_CHANNELS if iterative else PHOTO_CHANNELS, size,
                             n_iters, True, w_dim=w_dim, widths=self.widths, units=self.units)

    def more_input_files(self) -> dict[str, str]:
        """The photos, each recorded by its digest (a resume refuses changed ones)."""
        if self.photos is None:
            return {}
        return {f"photo {p}": str(p) for p in photo_files(self.photos)}

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["widths"], d["units"] = list(self.widths), list(self.units)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EncoderTrainConfig":
        check_config_keys(cls, d, cls.command)
        return cls(**d)


def photo_files(folder: str | os.PathLike) -> list[Path]:
    """The images directly in ``folder`` (by suffix), sorted by name; one line if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HyperdomainError(f"--photos {folder}: {'not a folder' if folder.exists() else 'no such folder'}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise HyperdomainError(f"--photos {folder}: no images in it ({', '.join(IMAGE_SUFFIXES)})")
    return files


# ------------------------------------------------------------------------------------------- the run
def train_encoder(G, kind: str | None = None, *, out_dir: str | os.PathLike | None = None,
                  resume: str | os.PathLike | None = None, config: EncoderTrainConfig | None = None,
                  dist: DistInfo | None = None, lpips: torch.nn.Module | None = None, detector=None,
                  callback: Callback | None = None, progress: bool = True, stop: StopFlag | None = None,
                  **options: Any) -> PhotoEncoder:
    """Train an encoder of ``kind`` (``e4e``, ``restyle-psp``, ``restyle-e4e``) for frozen ``G``;
    returns it (eval mode). ``options`` are :class:`EncoderTrainConfig` fields (``iters``, ``batch``,
    ``lr``, ``losses``, ``photos``, ``widths``, ...); ``resume=DIR`` continues a saved run (``iters``
    may extend it). ``lpips``: a loaded LPIPS module; ``detector``: the face detector for aligned
    photos; ``dist``: from :func:`hyperdomain.distributed.setup` under torchrun; ``stop``: as for
    :func:`~hyperdomain.adapt`."""
    dist = dist or DistInfo(device=G.device)
    state = None
    if resume is not None:
        extra = set(options) - {"iters"}
        if extra or kind is not None or config is not None:
            raise HyperdomainError(f"resume keeps the run's settings; drop {sorted(extra) or ['kind/config']}")
        out_dir = Path(resume)
        tensors, meta, config = open_resume(out_dir, EncoderRun.kind, EncoderTrainConfig, G, options.get("iters"))
        state = (tensors, meta)
    else:
        unknown = set(options) - {f.name for f in fields(EncoderTrainConfig)}
        if unknown:
            raise HyperdomainError(f"train-encoder: unknown options {sorted(unknown)}")
        options = {k: v for k, v in options.items() if v is not None}
        if kind is not None:
            options["kind"] = kind
        if "photos" in options:
            folder = Path(options["photos"])
            options["photos"] = str(folder.resolve()) if folder.exists() else str(folder)
        config = EncoderTrainConfig(**options) if config is None else replace(config, **options)
    out = Path(out_dir) if out_dir is not None else None
    if resume is None:  # on every rank, before DDP's first collective
        refuse_existing_run(out, EncoderRun.kind)
    require(config.dashboards)
    run = EncoderRun(G, config, out, dist, lpips, detector)
    if state is not None:
        run.restore(*state)
    return run.train(callback, progress, stop)


def read_encoder_train_config(run_dir: str | os.PathLike) -> EncoderTrainConfig:
    """The config of the encoder run saved in ``run_dir``."""
    return EncoderTrainConfig.from_dict(read_checkpoint_meta(Path(run_dir) / CHECKPOINT, EncoderRun.kind)["config"])


class EncoderRun(TrainingRun):
    """An encoder run: the encoder network (DDP under torchrun), Adam, draws seeded by (seed, step, rank)."""

    kind = "encoder"
    desc = "train-encoder"

    def __init__(self, G, config: EncoderTrainConfig, out_dir: Path | None, dist: DistInfo,
                 lpips: torch.nn.Module | None = None, detector=None):
        c = config
        self.local_batch = local_batch(c.batch, dist.world, 2, "BatchNorm")
        G.eval().requires_grad_(False)
        super().__init__(G, config, out_dir, dist)
        try:
            self.enc_config = c.encoder_config(G.num_ws, G.w_dim, G.resolution)
        except HyperdomainError as e:
            raise HyperdomainError(f"train-encoder: {e}") from None
        self.loss_size = min(c.loss_size, G.resolution)
        self.photos = self._load_photos(detector) if c.photos is not None else None
        self.photo_names = [p.name for p in photo_files(c.photos)] if c.photos is not None else []
        self.lpips = None
        if c.losses.lpips:
            self.lpips = lpips if lpips is not None else load_lpips(G.device, c.lpips_backbone)
        with torch.random.fork_rng(devices=[]):  # the caller's global RNG stays as it was
            torch.manual_seed(c.seed)  # the network's initialisation; identical on every rank
            self.encoder = PhotoEncoder(self.enc_config).to(G.device)
        with torch.no_grad():
            self.encoder.latent_avg.copy_(G.mean_latent().reshape(1, -1).expand(G.num_ws, -1))
        self.net = self.encoder.encoder.train()
        self.model = self.net
        if dist.active:
            if G.device.type == "cuda":
                self.net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
                self.encoder.encoder = self.net
            # e4e's progressive stages leave the later heads out of the graph until their turn
            self.model = DDP(self.net, device_ids=[G.device.index] if G.device.type == "cuda" else None,
                             find_unused_parameters=bool(c.progressive_every) and self.enc_config.progressive)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=c.lr, betas=c.betas)
        self._sample_ws: torch.Tensor | None = None
        self._avg_image: torch.Tensor | None = None

    def _load_photos(self, detector) -> torch.Tensor:
        from ..image.inversion import prepare_photo

        c = self.config
        prepared = [prepare_photo(self.G, p, align=c.align, detector=detector) for p in photo_files(c.photos)]
        return torch.cat([p.tensor(self.loss_size) for p in prepared]).to(self.G.device)  # [P, 3, S, S]

    # ------------------------------------------------------------------ a step
    def render(self, ws: torch.Tensor) -> torch.Tensor:
        return self.G.synthesis(ws, noise_mode="const")

    def losses(self) -> dict[str, torch.Tensor]:
        c, G = self.config, self.G
        b = self.local_batch
        rng = torch.Generator().manual_seed(_seed_for(c.seed, self.step, self.dist.rank))
        if self.photos is not None and float(torch.rand((), generator=rng)) < c.photo_fraction:
            pick = torch.randint(0, self.photos.shape[0], (b,), generator=rng)
            target, ws_true = self.photos[pick.to(self.photos.device)], None
        else:
            ws_true = draw_ws(G, rng, b, c.mixing)
            with torch.no_grad():  # the image as a photo of it would hold it
                target = pool_render(self.render(ws_true), self.loss_size).clamp(-1, 1)
        self._set_stage()
        x = _resize(target, self.enc_config.input_size)
        if not self.enc_config.iterative:
            return self._pass_losses(self.model(x) + self.encoder.latent_avg, target, ws_true)
        # ReStyle: each pass reads the photo and the last reconstruction, both detached
        total: dict[str, torch.Tensor] = {}
        ws = self.encoder.latent_avg[None].expand(b, -1, -1)
        y = self._average_image().expand(b, -1, -1, -1)
        for _ in range(self.enc_config.n_iters):
            ws = self.model(torch.cat([x, y], dim=1)) + ws.detach()
            parts, rec = self._pass_losses(ws, target, ws_true, keep_rec=True)
            for k, v in parts.items():
                total[k] = total[k] + v if k in total else v
            y = _resize(rec.detach(), self.enc_config.input_size)
        return total

    def _pass_losses(self, ws: torch.Tensor, target: torch.Tensor, ws_true: torch.Tensor | None,
                     keep_rec: bool = False):
        w = self.config.losses
        rec = pool_render(self.render(ws), self.loss_size)
        parts: dict[str, torch.Tensor] = {}
        if w.latent and ws_true is not None:
            parts["latent"] = F.mse_loss(ws, ws_true)
        if w.l2:
            parts["l2"] = F.mse_loss(rec, target)
        if w.lpips:
            parts["lpips"] = lpips_distance(self.lpips, rec, target).mean()
        if w.delta_norm and self.enc_config.progressive:
            parts["delta_norm"] = delta_norm(ws, self._active_layers())
        parts["total"] = sum(getattr(w, k) * v for k, v in parts.items())
        return (parts, rec) if keep_rec else parts

    def _active_layers(self) -> int:
        stage = self.net.progressive_stage
        return self.enc_config.n_styles if stage is None else min(stage + 1, self.enc_config.n_styles)

    def _set_stage(self) -> None:
        every = self.config.progressive_every
        if every and self.enc_config.progressive and self.step // every + 1 < self.enc_config.n_styles:
            self.net.progressive_stage = self.step // every
        else:
            self.net.progressive_stage = None

    def _average_image(self) -> torch.Tensor:
        """The average latent's render at the encoder's input size ``[1, 3, S, S]`` (ReStyle's first input)."""
        if self._avg_image is None:
            with torch.no_grad():
                img = self.render(self.encoder.latent_avg[None])
            self._avg_image = _resize(pool_render(img, self.loss_size), self.enc_config.input_size)
        return self._avg_image

    # ------------------------------------------------------------------ state
    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"encoder.{k}": v for k, v in self.net.state_dict().items()}

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        state = {k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")}
        try:
            self.net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise HyperdomainError(f"checkpoint encoder does not fit ({str(e).splitlines()[0]})") from None

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"world": self.dist.world, "photos": self.photo_names}

    def restore(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        saved = meta.get("photos", [])
        if saved != self.photo_names:
            raise HyperdomainError(f"--resume {self.out_dir}: the photos folder {self.config.photos} changed since the "
                                   f"run began ({len(saved)} photos then, {len(self.photo_names)} now); put the "
                                   f"original back, or start a new run")
        super().restore(tensors, meta)

    # ------------------------------------------------------------------ outputs
    def result(self) -> PhotoEncoder:
        broadcast_buffers(self.dist, self.net)  # every rank returns the same BatchNorm statistics
        # (SyncBatchNorm keeps BatchNorm's names: the state loads into the plain network)
        state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        meta = {**generator_meta(self.G), "trainer": "train-encoder", "iterations": self.step,
                "seed": self.config.seed, "hyperdomain_version": __version__}
        return PhotoEncoder.from_state(self.enc_config, state, self.encoder.latent_avg.detach().clone(), meta).to(
            self.G.device)

    def write_outputs(self, result: PhotoEncoder) -> None:
        save_encoder(self.out_dir / ENCODER_FILE, result, self.G.fingerprint,
                     source=f"train-encoder {self.out_dir.name} step {self.step}")

    def stop_outputs(self) -> None:
        self.write_outputs(self.result())

    def save_samples(self, path: Path) -> None:
        """Rows: renders of fixed latents (``seed``, ``sample_truncation``) and the encoder's
        reconstructions; with photos, the first ones and theirs."""
        c, G = self.config, self.G
        if self._sample_ws is None:
            z = torch.randn(c.sample_n, G.z_dim, generator=torch.Generator().manual_seed(c.seed))
            with torch.no_grad():
                w = G.mapping(z.to(G.device), truncation=c.sample_truncation)
            self._sample_ws = w[:, None].expand(-1, G.num_ws, -1)
        was = self.net.training
        self.net.eval()
        try:
            with torch.no_grad():
                targets = [pool_render(self.render(self._sample_ws), self.loss_size).clamp(-1, 1)]
                if self.photos is not None:
                    targets.append(self.photos[: c.sample_n])
                rows = []
                for t in targets:
                    rows += [t, pool_render(self.render(self._encode(t)), self.loss_size)]
        finally:
            self.net.train(was)
        save_grid(torch.cat(rows), path, nrow=c.sample_n)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        stage, self.net.progressive_stage = self.net.progressive_stage, None
        try:
            return encode(self.encoder, images, render=self.render)
        finally:
            self.net.progressive_stage = stage


def draw_ws(G, rng: torch.Generator, b: int, mixing: float) -> torch.Tensor:
    """W+ ``[b, num_ws, w_dim]`` of random renders: ``z`` from ``rng`` mapped (truncation 1); each
    sample with probability ``mixing`` crosses to a second code at a random layer in ``[1, num_ws)``."""
    z1 = torch.randn(b, G.z_dim, generator=rng)
    z2 = torch.randn(b, G.z_dim, generator=rng)
    mix = torch.rand(b, generator=rng) < mixing
    cross = torch.randint(1, G.num_ws, (b,), generator=rng)
    cross = torch.where(mix, cross, torch.full_like(cross, G.num_ws))  # num_ws: all layers from z1
    with torch.no_grad():
        w1, w2 = G.mapping(z1.to(G.device)), G.mapping(z2.to(G.device))
        return G.style_mix(w1, w2, cross.to(G.device))


def delta_norm(ws: torch.Tensor, active: int) -> torch.Tensor:
    """e4e's delta regulariser: ``sum_{i=1}^{active-1} mean_b |ws[b, i] - ws[b, 0]|_2``."""
    if active < 2:
        return ws.sum() * 0
    deltas = ws[:, 1:active] - ws[:, :1]  # [B, active - 1, w]
    return deltas.norm(dim=2).mean(0).sum()


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images at the encoder's input size, as ``fit_input`` resizes photos (renders may stray past [-1, 1])."""
    if images.shape[2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
