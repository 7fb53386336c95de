"""``RunConfig``: the fields every trainer's config has, their checks, and their plain-data form.

A trainer's config subclasses it (frozen, keyword-only fields), sets ``command`` (named in
messages) and ``run`` (which losses of the registry it may use, and their defaults), redeclares the
defaults that differ (the paper's per-trainer settings) and adds its own fields and checks.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Mapping

from ..errors import HyperdomainError
from ..guidance.clip import DEFAULT_CLIP, templates
from ..guidance.losses import LossWeights
from ..model.config import check_config_keys
from .dashboards import parse_dashboards


MAX_LR = 1000.0  # above it Adam's first steps overflow float32 into a non-finite stop (the CLI's --lr bound too)


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """What every run has. Defaults: the paper's single-domain FFHQ settings."""

    command: ClassVar[str] = "train"  # the command, in messages ("adapt", "adapt --image", "train-hyper")
    run: ClassVar[str] = ""  # the trainer's name in the loss registry ("adapt", "image", "hyper")
    loss_scope: ClassVar[str] = ""  # "--loss X: not a loss of {loss_scope}"

    clip: tuple[str, ...] = DEFAULT_CLIP  # the CLIP ensemble of the losses (specs, paths absolute)
    iters: int = 300
    batch: int = 4
    lr: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    losses: LossWeights = field(default_factory=LossWeights)
    mixing: float = 0.9  # style-mixing probability of the training latents
    templates: str = "imagenet"
    seed: int = 0
    sample_every: int = 50
    checkpoint_every: int = 50
    sample_n: int = 6
    sample_truncation: float = 0.7
    generator: str | None = None  # the name or path the generator was loaded from (for resume)
    dashboards: tuple[str, ...] = ()  # "tensorboard", "wandb": logged beside log.jsonl (rank 0)

    def __post_init__(self) -> None:
        """Normalise the shared fields and check them all, then the trainer's own :meth:`checks`:
        a bad value is one line, ``{command}: {field} must be {expected}, got {value}``."""
        object.__setattr__(self, "clip", tuple(self.clip))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if isinstance(self.losses, Mapping):
            object.__setattr__(self, "losses", LossWeights.from_mapping(self.losses))
        object.__setattr__(self, "dashboards", parse_dashboards(self.dashboards))  # refuses an unknown name
        shared = [
            (self.iters >= 1, "iters", "an integer >= 1"),
            (self.batch >= 1, "batch", "an integer >= 1"),
            (0 < self.lr <= MAX_LR, "lr", f"a number in (0, {MAX_LR:g}]"),
            (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas", "two numbers in [0, 1)"),
            (0 <= self.mixing <= 1, "mixing", "a probability in [0, 1]"),
            (self.sample_every >= 0 and self.checkpoint_every >= 0, "sample_every/checkpoint_every", ">= 0 (0: off)"),
            (self.sample_n >= 1, "sample_n", ">= 1"),
            (0 <= self.seed < 2**63, "seed", "in [0, 2^63)"),
            (bool(self.clip), "clip", "at least one CLIP model"),
        ]
        for ok, name, expected in shared + self.checks():
            if not ok:
                raise HyperdomainError(f"{self.command}: {name} must be {expected}, got "
                                       f"{getattr(self, name.split('/')[0])!r}")
        templates(self.templates)  # refuses an unknown template set by name
        self.check_losses()

    def check_losses(self) -> None:
        """The loss weights fit the trainer (one with losses of its own outside the registry overrides it)."""
        self.losses.check_usable(self.run, self.loss_scope or self.command)
        if self.losses.indomain and self.batch < 2:
            raise HyperdomainError("--loss indomain needs --batch of at least 2")

    def checks(self) -> list[tuple[bool, str, str]]:
        """The trainer's own ``(ok, field, expected)`` checks."""
        return []

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (losses by their public names), as checkpoints and artifacts store it."""
        d = asdict(self)
        d["losses"] = self.losses.as_dict()
        d["clip"], d["betas"], d["dashboards"] = list(self.clip), list(self.betas), list(self.dashboards)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Any:
        """Inverse of :meth:`to_dict`; unknown keys are refused by name."""
        check_config_keys(cls, d, cls.command)
        return cls(**{**d, "losses": LossWeights.from_mapping(d.get("losses", {}))})
