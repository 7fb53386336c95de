"""Multi-domain training of a HyperDomainNet: one network, many prompts, one or many processes.

Each step draws a domain per sample from the training list (uniformly, with replacement) and
one batch of latents, maps the input CLIP embeddings of the prompts (ViT-B/32 of the bare
prompt, unit norm) through the hypernetwork to domain vectors, and trains on the CLIP losses of
the adapted images (``direction`` 1.0 + ``tt_direction`` 0.4 by default). Two augmentations from
the paper, each switchable:

- **convex hull**: every sample's input embedding, and per template its target and source text
  embeddings, become a convex combination of the batch's, with Dirichlet weights (concentration
  ``2 / b``), re-normalised; the network learns the space *between* the training prompts;
- **resampling**: each target text embedding (per template) is replaced by a random unit vector
  at cosine >= ``resample_cos`` (0.95) to it, uniform in that cosine.

As in the single-domain trainer (and the paper's code), the source and adapted passes share
``z`` but draw their own crossover, noise and (here) the random square crop of ``crop`` of the
side that the paper's code takes before CLIP.

Under ``torchrun`` the same function runs with DDP: the global ``batch`` is split over the ranks.
The global batch's domains and Dirichlet weights come from a generator seeded by (seed, step), the
same on every rank, and each rank takes its rows, so the convex combinations span the global batch
as in one process; each rank draws its own latents, noise and crops from a generator seeded by
(seed, step, rank). BatchNorm runs over the global batch on GPUs (SyncBatchNorm); the pairwise
``tt_direction`` loss pairs the samples within each rank. Rank 0 logs and writes; a checkpoint
resumes on any number of processes. On one CPU a seed gives the same network every time, and a
resumed run equals an uninterrupted one.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from .._version import __version__
from ..guidance.clip import ClipEncoder, ClipSpec, check_models, load_clip, run_spec, templates
from ..model.config import DEFAULT_SOURCE_PROMPT
from ..distributed import DistInfo, broadcast_buffers, local_batch
from ..model.domain import generator_meta
from ..guidance.domain_lists import read_domain_list
from ..errors import HyperdomainError
from ..files.atomic import write_text
from ..files.run_checkpoints import CHECKPOINT, read_checkpoint_meta
from ..model.hypernet import HyperConfig, HyperDomainNet
from ..media.grids import save_grid
from ..guidance.losses import Embeddings, LossWeights, StepImages, compute_losses, default_weights
from .latents import sample_training_latents
from .loop import Callback, TrainingRun, open_resume
from .run_config import RunConfig
from .run_dir import refuse_existing_run

__all__ = ["HyperTrainConfig", "train_hyper", "read_hyper_config", "resample_on_cone", "convex_weights",
           "HYPERNET_FILE"]

log = logging.getLogger(__name__)

HYPERNET_FILE = "hypernet.safetensors"
MAX_PARAMETERS = 2_000_000_000  # a bound that catches a mistyped --width before it allocates (paper: 13.9M)


@dataclass(frozen=True, kw_only=True)
class HyperTrainConfig(RunConfig):
    """Everything that defines a hypernetwork run (stored in its checkpoint and output)."""

    command: ClassVar[str] = "train-hyper"
    run: ClassVar[str] = "hyper"

    domains: str = "builtin:train"  # a domain list file, or builtin:train / builtin:heldout
    test_domains: str | None = "builtin:heldout"
    input_clip: str = "ViT-B-32"  # the hypernetwork's input encoder (bare prompt)
    iters: int = 10_000
    batch: int = 8  # global batch, split over the ranks
    lr: float = 5e-5
    losses: LossWeights = field(default_factory=lambda: default_weights("hyper"))
    convex_hull: bool = True
    resample_cos: float | None = 0.95  # None: no resampling
    crop: float = 0.8  # side fraction of the random crop before CLIP; 1: none
    backbone_blocks: int = HyperConfig.backbone_blocks
    head_blocks: int = HyperConfig.head_blocks
    width: int = HyperConfig.width
    sample_every: int = 500
    checkpoint_every: int = 500
    sample_n: int = 4
    sample_prompts: int = 6
    source: str = DEFAULT_SOURCE_PROMPT  # the default source prompt of list lines without one

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.losses.direction or self.losses.global_ or self.losses.tt_direction):
            raise HyperdomainError("--loss: direction, tt_direction or global must be > 0, or the prompts play no part")

    def checks(self) -> list[tuple[bool, str, str]]:
        return [
            (self.batch >= 2, "batch", ">= 2 (BatchNorm, pairwise losses)"),
            (self.resample_cos is None or 0 < self.resample_cos < 1, "resample_cos", "in (0, 1), or None for off"),
            (0 < self.crop <= 1, "crop", "in (0, 1]"),
            (self.backbone_blocks >= 0 and self.head_blocks >= 0, "backbone_blocks/head_blocks", ">= 0"),
        ]


# ----------------------------------------------------------------------------------- augmentations
def convex_weights(b: int, rng: torch.Generator) -> torch.Tensor:
    """``[b, b]`` rows of Dirichlet(2/b, ..., 2/b) weights, drawn reproducibly from ``rng``."""
    seed = int(torch.randint(0, 2**62, (), generator=rng))
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # torch's gamma sampler takes no generator; fork restores it
        return torch.distributions.Dirichlet(torch.full((b, b), 2.0 / b)).sample()


def _mix(vectors: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """Convex combinations ``alphas [b, B]`` of ``vectors [B, ..., E]`` over axis 0, re-normalised."""
    out = torch.einsum("ij,j...->i...", alphas.to(vectors), vectors)
    return out / out.norm(dim=-1, keepdim=True)


def resample_on_cone(vectors: torch.Tensor, min_cos: float, rng: torch.Generator) -> torch.Tensor:
    """Random unit vectors at cosine ``U[min_cos, 1]`` to each row of ``vectors [..., E]``."""
    u = vectors / vectors.norm(dim=-1, keepdim=True)
    g = torch.randn(u.shape, generator=rng).to(u)
    perp = g - (g * u).sum(-1, keepdim=True) * u
    perp = perp / perp.norm(dim=-1, keepdim=True)
    cos = (torch.rand(u.shape[:-1] + (1,), generator=rng) * (1 - min_cos) + min_cos).to(u)
    return cos * u + torch.sqrt(1 - cos**2) * perp


def _crop_box(size: int, frac: float, rng: torch.Generator) -> tuple[int, int, int]:
    side = max(1, int(size * frac))
    if side >= size:
        return 0, 0, size
    top, left = (int(v) for v in torch.randint(0, size - side + 1, (2,), generator=rng))
    return top, left, side


# ------------------------------------------------------------------------------------------- data
class _TextTable:
    """Per-encoder template embeddings ``[P, T, E]`` of every prompt, plus the input embeddings."""

    def __init__(self, prompts: Mapping[str, str], encoders: Sequence[ClipEncoder], input_encoder: ClipEncoder,
                 template_set: Sequence[str], device, progress: bool = True):
        """``prompts`` maps each prompt to where it comes from (``"domains.txt: line 4"``), for errors."""
        order = list(prompts)
        self.index = {p: i for i, p in enumerate(order)}
        _warn_if_large(len(order), encoders, input_encoder, len(template_set))
        bar = tqdm(total=len(order) * (len(encoders) + 1), desc="encoding prompts", unit="prompt",
                   dynamic_ncols=True, disable=(not progress) or None)
        with bar:
            self.per_encoder = []
            for e in encoders:
                rows = []
                for p in order:
                    rows.append(e.template_embeddings(p, template_set, prompts[p]))
                    bar.update(1)
                self.per_encoder.append(torch.stack(rows).to(device))
            inputs = []
            for i in range(0, len(order), 256):
                chunk = order[i:i + 256]
                inputs.append(input_encoder.encode_bare_text(chunk, [prompts[p] for p in chunk]))
                bar.update(len(chunk))
            self.inputs = torch.cat(inputs).to(device)


LARGE_TABLE_BYTES = 2 * 2**30  # a prompt table past this gets a warning with its size


def _warn_if_large(n_prompts: int, encoders: Sequence[ClipEncoder], input_encoder: ClipEncoder,
                   n_templates: int) -> None:
    """A list of a few hundred thousand prompts holds tens of GB of template embeddings: say so
    before encoding it (the table is kept in memory, on the training device, for the whole run)."""
    size = 4 * n_prompts * (n_templates * sum(e.embed_dim for e in encoders) + input_encoder.embed_dim)
    if size > LARGE_TABLE_BYTES:
        log.warning("%d prompts: their text embeddings (%d templates each) take %.1f GiB on the training device "
                    "for the whole run; a shorter list, or --templates with fewer templates, takes less",
                    n_prompts, n_templates, size / 2**30)


def draw_domains(seed: int, step: int, batch: int, n_domains: int, convex: bool
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The global batch's training domains ``[batch]`` and Dirichlet weights ``[batch, batch]``.

    Drawn from a generator seeded by (seed, step) alone, so every rank draws the same global batch
    and takes its own rows: the convex combinations span the whole global batch, exactly as in one
    process.
    """
    rng = torch.Generator().manual_seed(_seed_for(seed, step, -1))
    picks = torch.randint(0, n_domains, (batch,), generator=rng)
    return picks, (convex_weights(batch, rng) if convex else None)


def _seed_for(seed: int, step: int, rank: int) -> int:
    """A well-mixed 63-bit seed for (seed, step, rank): each step's draws need no saved RNG state."""
    x = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + (rank + 2) * 0x94D049BB133111EB + 1) % 2**64
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) % 2**64
    return (x ^ (x >> 32)) % 2**63


# ------------------------------------------------------------------------------------------- the run
def train_hyper(G, config: HyperTrainConfig | None = None, *, clip: Sequence[str | ClipEncoder] | None = None,
                input_clip: str | ClipEncoder | None = None, out_dir: str | os.PathLike | None = None,
                resume: str | os.PathLike | None = None, dist: DistInfo | None = None,
                callback: Callback | None = None, progress: bool = True, **options: Any) -> HyperDomainNet:
    """Train a HyperDomainNet for generator ``G``; returns it (eval mode, on ``G``'s device).

    ``config`` or keyword ``options`` give :class:`HyperTrainConfig` fields. ``clip`` (loss
    ensemble) and ``input_clip`` accept spec strings or loaded encoders. ``resume=DIR`` continues
    the run in ``DIR`` (its config; ``iters`` in ``options`` may extend it). ``dist`` comes from
    :func:`hyperdomain.distributed.setup` under torchrun.
    """
    dist = dist or DistInfo(device=G.device)
    state = None
    if resume is not None:
        extra = set(options) - {"iters"}
        if extra:
            raise HyperdomainError(f"resume keeps the run's settings; drop {sorted(extra)}")
        out_dir = Path(resume)
        tensors, meta, config = open_resume(out_dir, "hyper", HyperTrainConfig, G, options.get("iters"))
        state = (tensors, meta)
    else:
        config = HyperTrainConfig(**options) if config is None else replace(config, **options)
        # for a new run the models passed in define it (and are recorded in its config)
        # files named by the specs are recorded absolute: a resume or an export from another folder finds them
        config = replace(config, clip=tuple(run_spec(c) for c in (clip if clip is not None else config.clip)),
                         input_clip=run_spec(input_clip if input_clip is not None else config.input_clip))
    out = Path(out_dir) if out_dir is not None else None
    if resume is None:  # on every rank, before DDP's first collective: no rank sees rank 0's new files
        refuse_existing_run(out, _HyperRun.kind)
    run = _HyperRun(G, config, clip, input_clip, out, dist, progress)
    if state is not None:
        run.restore(*state)
    return run.train(callback, progress)


def read_hyper_config(run_dir: str | os.PathLike) -> HyperTrainConfig:
    """The config of the hypernetwork run saved in ``run_dir``."""
    return HyperTrainConfig.from_dict(read_checkpoint_meta(Path(run_dir) / CHECKPOINT, "hyper")["config"])


class _HyperRun(TrainingRun):
    """A hypernetwork run: the network (DDP under torchrun), Adam, draws seeded by (seed, step, rank)."""

    kind = "hyper"
    desc = "train-hyper"

    def __init__(self, G, config: HyperTrainConfig, clip, input_clip, out_dir: Path | None, dist: DistInfo,
                 progress: bool = True):
        c = config
        self.local_batch = local_batch(c.batch, dist.world, 2, "BatchNorm and the pairwise losses")
        G.eval().requires_grad_(False)
        super().__init__(G, config, out_dir, dist)
        self.train_list = read_domain_list(c.domains, c.source)
        self.test_list = read_domain_list(c.test_domains, c.source) if c.test_domains else []
        self.encoders = load_clip(clip if clip is not None else c.clip, device=G.device)
        check_models(self.encoders, c.clip)
        self.input_encoder = self._input_encoder(input_clip)
        input_dim = self.input_encoder.embed_dim
        hc = HyperConfig(domain_dims=G.domain_dims, input_dim=input_dim, width=c.width,
                         backbone_blocks=c.backbone_blocks, head_blocks=c.head_blocks)
        if hc.num_parameters > MAX_PARAMETERS:  # checked before encoding the list: weights, gradients and
            raise HyperdomainError(  # Adam's two moments take 16 bytes each
                f"--width {c.width}: the hypernetwork would have {hc.num_parameters / 1e9:.1f}G parameters, about "
                f"{hc.num_parameters * 16 / 2**30:.0f} GiB to train; at most {MAX_PARAMETERS / 1e9:.0f}G are allowed")
        tpl = templates(c.templates)
        prompts = {d.target: f"{c.domains}: line {d.line}" for d in self.train_list}  # targets first: index = line order
        prompts.update({d.source: f"{c.domains}: line {d.line}" for d in self.train_list if d.source not in prompts})
        self.table = _TextTable(prompts, self.encoders, self.input_encoder, tpl, G.device,
                                progress=progress and dist.is_main)
        self.shown = (self.test_list or self.train_list)[: c.sample_prompts]  # rows of the sample grids
        shown_from = c.test_domains if self.test_list else c.domains
        self.shown_inputs = self.input_encoder.encode_bare_text(
            [d.target for d in self.shown], [f"{shown_from}: line {d.line}" for d in self.shown]).to(G.device)
        self._source_row: torch.Tensor | None = None  # the sample grids' first row, made once
        self.trg_idx = torch.tensor([self.table.index[d.target] for d in self.train_list])
        self.src_idx = torch.tensor([self.table.index[d.source] for d in self.train_list])
        with torch.random.fork_rng(devices=[]):  # the caller's global RNG stays as it was
            torch.manual_seed(c.seed)  # the network's initialisation; identical on every rank
            self.net = HyperDomainNet(hc).to(G.device).train()
        self.model = self.net
        if dist.active:
            if G.device.type == "cuda":
                # BatchNorm over the global batch, as one process would see it (SyncBatchNorm is GPU-only;
                # on CPU each rank normalises its own share and rank 0's statistics are kept)
                self.net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
            self.model = DDP(self.net, device_ids=[G.device.index] if G.device.type == "cuda" else None)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=c.lr, betas=c.betas)
        frozen = [n for n, p in G.named_parameters() if p.requires_grad]
        frozen += [n for e in self.encoders + [self.input_encoder] for n, p in e.named_parameters() if p.requires_grad]
        assert not frozen, f"frozen models have trainable parameters: {frozen[:5]}"

    def _input_encoder(self, input_clip) -> ClipEncoder:
        spec = input_clip if input_clip is not None else self.config.input_clip
        if isinstance(spec, ClipEncoder):
            enc = spec.to(self.G.device)
        else:
            label = ClipSpec.parse(spec).label
            same = [e for e in self.encoders if e.label == label]  # reuse the ensemble's copy of that model
            enc = same[0] if same else load_clip([spec], device=self.G.device)[0]
        check_models([enc], [self.config.input_clip], what="--input-clip")
        return enc

    # ------------------------------------------------------------------ state
    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"net.{k}": v for k, v in self.net.state_dict().items()}

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        net_state = {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}
        try:
            self.net.load_state_dict(net_state, strict=True)
        except RuntimeError as e:
            raise HyperdomainError(f"checkpoint network does not fit ({str(e).splitlines()[0]})") from None

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"world": self.dist.world}

    # ------------------------------------------------------------------ outputs
    def result(self) -> HyperDomainNet:
        broadcast_buffers(self.dist, self.net)  # every rank returns the same network
        self.net.meta = self.network_meta()
        self.net.text_encoder(self.input_encoder)  # hdn.domain("...") works at once, with the same CLIP
        return self.net.eval()

    def write_outputs(self, result: HyperDomainNet) -> None:
        result.save(self.out_dir / HYPERNET_FILE)

    def network_meta(self) -> dict[str, Any]:
        c = self.config
        spec = ClipSpec.parse(c.input_clip)
        # where the prompt encoder's files are, for hdn.domain() elsewhere (only specs that name files)
        files = {"input_clip_spec": c.input_clip} if spec.is_config_file or spec.weights else {}
        return {**generator_meta(self.G), "input_clip": self.input_encoder.label, **files,
                "clip_models": [e.label for e in self.encoders],
                "losses": c.losses.as_dict(), "iterations": self.step, "seed": c.seed, "batch": c.batch,
                "lr": c.lr, "convex_hull": c.convex_hull, "resample_cos": c.resample_cos, "crop": c.crop,
                "templates": c.templates, "source_prompt": c.source,
                "train_prompts": [d.target for d in self.train_list], "trainer": "train-hyper",
                "hyperdomain_version": __version__}

    def save_samples(self, path: Path) -> None:
        c = self.config
        if self._source_row is None:  # the same seeds every time: the source row never changes
            self._source_row = self.G.sample(c.sample_n, truncation=c.sample_truncation, seed=c.seed)
        rows = [self._source_row]
        was = self.net.training
        self.net.eval()
        with torch.no_grad():
            ds = self.net(self.shown_inputs)
        self.net.train(was)
        rows += [self.G.sample(c.sample_n, domain=d, truncation=c.sample_truncation, seed=c.seed) for d in ds]
        save_grid(torch.cat(rows), path, nrow=c.sample_n)

    def prepare_files(self) -> None:
        write_text(self.out_dir / "samples_rows.txt", "source\n" + "".join(d.target + "\n" for d in self.shown))

    # ------------------------------------------------------------------ a step
    def losses(self) -> dict[str, torch.Tensor]:
        c, dist = self.config, self.dist
        b = self.local_batch
        picks, alphas = draw_domains(c.seed, self.step, c.batch, len(self.train_list), c.convex_hull)
        rows = slice(dist.rank * b, (dist.rank + 1) * b)  # this rank's share of the global batch
        if alphas is None:
            picks = picks[rows]
        else:
            alphas = alphas[rows].to(self.G.device)  # [b, B]: mixtures over the whole global batch
        rng = torch.Generator().manual_seed(_seed_for(c.seed, self.step, dist.rank))  # latents, noise, crops
        batch = sample_training_latents(self.G, rng, b, c.mixing, self.G.device)
        boxes = (_crop_box(self.G.resolution, c.crop, rng), _crop_box(self.G.resolution, c.crop, rng))
        trg_i, src_i = self.trg_idx[picks], self.src_idx[picks]
        emb = self.table.inputs[trg_i.to(self.table.inputs.device)]
        if alphas is not None:
            emb = _mix(emb, alphas)
        domains = self.model(emb)  # [b, D]
        return self._losses(domains, batch, trg_i, src_i, alphas, boxes, rng)

    def _losses(self, domains, batch, trg_i, src_i, alphas, boxes, rng) -> dict[str, torch.Tensor]:
        c = self.config
        (t0, l0, s0), (t1, l1, s1) = boxes
        with torch.no_grad():
            src_img = self.G.synthesis(batch.ws_src, noise=batch.noise_src)[..., t0:t0 + s0, l0:l0 + s0]
        trg_img = self.G.synthesis(batch.ws_trg, domain=domains, noise=batch.noise_trg)[..., t1:t1 + s1, l1:l1 + s1]
        def per_encoder():
            for enc, table in zip(self.encoders, self.table.per_encoder):
                t_trg, t_src = table[trg_i.to(table.device)], table[src_i.to(table.device)]  # [b, T, E]
                if alphas is not None:
                    t_trg, t_src = _mix(t_trg, alphas), _mix(t_src, alphas)
                if c.resample_cos is not None:
                    t_trg = resample_on_cone(t_trg, c.resample_cos, rng)
                with torch.no_grad():
                    se = enc.encode_images(src_img)
                yield Embeddings(se, enc.encode_images(trg_img), direction=(t_trg - t_src).mean(1),
                                 target=t_trg.mean(1))  # texts [b, E]

        return compute_losses(c.losses.as_dict(), per_encoder(), StepImages(domains, self.G.domain_dims))
