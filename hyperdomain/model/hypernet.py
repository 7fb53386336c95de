"""HyperDomainNet: a hypernetwork from a CLIP embedding to a domain vector.

The architecture is the paper's ``residual_channelin`` mapper (github.com/MACderRu/HyperDomainNet,
``core/mappers.py``), with its parameter names, so the authors' released hypernetworks load
exactly:

- backbone ``backbone.backbone``: block 0 is ``Linear(input_dim -> width) -> act -> BatchNorm``
  (the BatchNorm comes last, despite the paper's class name ``BNLinRelu``), then
  ``backbone_blocks`` residual blocks;
- a residual block: ``input_block = [Linear(width -> block_width), BatchNorm, act]``,
  ``second_block = [Linear(block_width -> width), BatchNorm]``, output ``act(x + second(input(x)))``;
- one head per modulated conv, ``heads.conv_{k}.in``: ``head_blocks`` residual blocks, then
  ``Linear(width -> c_in(k))``.

In the paper's configs ``backbone_depth = backbone_blocks + 1`` and ``head_depth = head_blocks + 1``
(``td_multiple_base.yaml``: 4 and 2; ``td_multiple.yaml``: 10 and 5); the residual blocks' inner
width is fixed at 512 there. BatchNorm is PyTorch's default (eps 1e-5, momentum 0.1). Every
Linear starts Xavier-uniform times 0.01 with zero bias, so a fresh network gives domains near 0.

Output semantics: the paper's ``cin_mult`` patch multiplies conv ``k``'s demodulated weight by
``1 + head_k(e)`` along the input axis, so a head's output *is* our ``d_k`` (no shift). The input
is the unit-normalised CLIP ViT-B/32 embedding of the bare prompt (template ``"{}"``); the network
itself does not normalise.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import nn

from ..guidance.clip import ClipEncoder, ClipSpec, load_clip
from .config import DEFAULT_SOURCE_PROMPT, config_from_dict, config_to_dict
from .domain import Domain
from ..errors import HyperdomainError
from .compatibility import check_fits, origin
from ..files.safetensors_files import HYPERNET, float32_tensor, json_field, read_own_file, write_own_file

if TYPE_CHECKING:  # pragma: no cover
    from .generator import Generator

__all__ = ["HyperConfig", "HyperDomainNet", "ACTIVATIONS", "check_state"]

FORMAT_VERSION = 1
ACTIVATIONS = ("relu", "lrelu")  # the paper's 'lrelu' has slope 0.2


@dataclass(frozen=True)
class HyperConfig:
    """Shape of a HyperDomainNet. ``domain_dims[k]`` is the input width of modulated conv ``k``."""

    domain_dims: tuple[int, ...]
    input_dim: int = 512
    width: int = 512
    block_width: int = 512
    backbone_blocks: int = 3
    head_blocks: int = 1
    activation: str = "relu"
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "domain_dims", tuple(int(d) for d in self.domain_dims))
        sizes = (self.input_dim, self.width, self.block_width)
        if not self.domain_dims or min(self.domain_dims) < 1 or min(sizes) < 1:
            raise HyperdomainError(f"invalid hypernetwork config {self}")
        if self.backbone_blocks < 0 or self.head_blocks < 0:
            raise HyperdomainError(f"hypernetwork block counts must be >= 0, got {self}")
        if self.activation not in ACTIVATIONS:
            raise HyperdomainError(f"hypernetwork activation {self.activation!r} is not one of {ACTIVATIONS}")

    @property
    def num_domain_params(self) -> int:
        return sum(self.domain_dims)

    @property
    def num_parameters(self) -> int:
        """The network's parameter count, from the config alone (before anything is allocated)."""
        w, bw = self.width, self.block_width
        block = (w * bw + bw) + 2 * bw + (bw * w + w) + 2 * w  # two Linear layers and two BatchNorms
        backbone = (self.input_dim * w + w) + 2 * w + self.backbone_blocks * block
        heads = sum(self.head_blocks * block + w * c + c for c in self.domain_dims)
        return backbone + heads

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self, "domain_dims")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "HyperConfig":
        return config_from_dict(cls, d, "hypernetwork", "domain_dims")


# --------------------------------------------------------------------------- layers
def _act(name: str) -> nn.Module:
    return nn.ReLU() if name == "relu" else nn.LeakyReLU(0.2)


class _LinActNorm(nn.Module):
    """``BatchNorm(act(Linear(x)))``: the paper's first backbone block (keys ``lin``, ``bn``)."""

    def __init__(self, cin: int, cout: int, cfg: HyperConfig) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(cout, eps=cfg.bn_eps, momentum=cfg.bn_momentum)
        self.lin = nn.Linear(cin, cout)
        self.act = _act(cfg.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.act(self.lin(x)))


class _ResBlock(nn.Module):
    """``act(x + BN(Linear(act(BN(Linear(x))))))`` with the paper's key names."""

    def __init__(self, width: int, inner: int, cfg: HyperConfig) -> None:
        super().__init__()
        self.input_block = nn.Sequential(
            nn.Linear(width, inner), nn.BatchNorm1d(inner, eps=cfg.bn_eps, momentum=cfg.bn_momentum),
            _act(cfg.activation))
        self.second_block = nn.Sequential(
            nn.Linear(inner, width), nn.BatchNorm1d(width, eps=cfg.bn_eps, momentum=cfg.bn_momentum))
        self.out = _act(cfg.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.second_block(self.input_block(x)) + x)


class _Backbone(nn.Module):
    """Holds ``backbone`` so keys read ``backbone.backbone.{i}`` as in the paper's files."""

    def __init__(self, cfg: HyperConfig) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            _LinActNorm(cfg.input_dim, cfg.width, cfg),
            *[_ResBlock(cfg.width, cfg.block_width, cfg) for _ in range(cfg.backbone_blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


def _head(c_in: int, cfg: HyperConfig) -> nn.ModuleDict:
    blocks = [_ResBlock(cfg.width, cfg.block_width, cfg) for _ in range(cfg.head_blocks)]
    return nn.ModuleDict({"in": nn.Sequential(*blocks, nn.Linear(cfg.width, c_in))})


def _init_linear(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        with torch.no_grad():
            m.weight.mul_(0.01)  # training starts at (nearly) the source domain
        nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- the network
class HyperDomainNet(nn.Module):
    """CLIP embedding ``[B, input_dim]`` -> domain vectors ``[B, D]`` (see the module docstring).

    ``meta`` is a plain JSON-able dict saved with the weights (generator name and fingerprint,
    CLIP model, training prompts, ...).
    """

    def __init__(self, config: HyperConfig, meta: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.config = config
        self.meta: dict[str, Any] = dict(meta or {})
        self._clip: list = []  # the prompt encoder, loaded on first use; a list so it is no submodule (never saved)
        self._embeddings: dict[str, torch.Tensor] = {}
        self.backbone = _Backbone(config)
        self.heads = nn.ModuleDict({f"conv_{k}": _head(c, config) for k, c in enumerate(config.domain_dims)})
        self.apply(_init_linear)

    @property
    def domain_dims(self) -> tuple[int, ...]:
        return self.config.domain_dims

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """Domain vectors ``[B, D]``, blocks in conv order ``conv1, convs[0], ...``, for ``emb [B, input_dim]``."""
        if emb.ndim != 2 or emb.shape[1] != self.config.input_dim:
            raise HyperdomainError(
                f"HyperDomainNet expects embeddings of shape [B, {self.config.input_dim}], got {list(emb.shape)}")
        if self.training and emb.shape[0] < 2:
            raise HyperdomainError(
                "HyperDomainNet in training mode needs a batch of at least 2 embeddings (BatchNorm "
                "uses batch statistics); call .eval() to map a single embedding")
        h = self.backbone(emb)  # [B, width]
        out = torch.cat([self.heads[f"conv_{k}"]["in"](h) for k in range(len(self.config.domain_dims))], dim=1)
        return out  # [B, D]

    # ----------------------------------------------------------------- prompts
    def text_encoder(self, clip: "str | ClipEncoder | None" = None) -> "ClipEncoder":
        """The CLIP model that embeds prompts for this network (the one it was trained with).

        Loaded on first use from ``meta["input_clip"]`` (e.g. ``ViT-B-32:openai``); pass a spec
        with a local weights file (``"ViT-B-32=/models/b32.safetensors"``) or a loaded encoder to
        choose it, e.g. offline.
        """
        if clip is not None:
            enc = clip if isinstance(clip, ClipEncoder) else load_clip([clip])[0]
            trained = self.meta.get("input_clip")  # None for networks imported without one recorded
            if trained and enc.label != trained:
                raise HyperdomainError(
                    f"hypernetwork{origin(self.meta)} takes prompts embedded by CLIP {trained}, not {enc.label}")
            self._clip[:] = [enc]
            self._embeddings = {}
        if not self._clip:
            self._clip[:] = [self._trained_text_encoder()]
            self._embeddings = {}
        p = next(self.parameters())
        return self._clip[0].to(p.device)

    def _trained_text_encoder(self) -> ClipEncoder:
        """The prompt encoder the network was trained with, from the files its run recorded if they
        are still there, else by name; one line saying how to pass it when neither loads."""
        label = self.meta.get("input_clip", "ViT-B-32:openai")
        spec = self.meta.get("input_clip_spec")
        if isinstance(spec, str):
            parsed = ClipSpec.parse(spec)
            files = [parsed.name] * parsed.is_config_file + [parsed.weights] * bool(parsed.weights)
            if all(Path(f).is_file() for f in files):
                return load_clip([spec])[0]
        try:
            return load_clip([label])[0]
        except HyperdomainError:
            if not label.split(":")[0].endswith(".json"):
                raise
            raise HyperdomainError(
                f"hypernetwork{origin(self.meta)} embeds prompts with the CLIP model config {label} "
                f"({spec or 'no path recorded'}), which is not found from here; pass it: --hyper-clip "
                f"/path/{label.split(':')[0]}[=WEIGHTS] (Python: hdn.text_encoder(spec))") from None

    def embed(self, prompts: "list[str]", clip: "str | ClipEncoder | None" = None) -> torch.Tensor:
        """Unit CLIP embeddings ``[N, input_dim]`` of the bare prompts (cached per prompt)."""
        if self.meta.get("input") == "image":
            raise HyperdomainError(f"hypernetwork{origin(self.meta)} maps CLIP image embeddings (an im2im network), "
                                   f"not prompts; use domain_from_embedding with an image embedding")
        enc = self.text_encoder(clip)
        missing = [q for q in dict.fromkeys(prompts) if q not in self._embeddings]
        if missing:
            for q, e in zip(missing, enc.encode_bare_text(missing)):
                self._embeddings[q] = e
        return torch.stack([self._embeddings[q].to(enc.device) for q in prompts])

    def domains(self, prompts: "list[str]", clip: "str | ClipEncoder | None" = None) -> "list[Domain]":
        """One :class:`Domain` per prompt (prompts it never saw included)."""
        if isinstance(prompts, str):
            raise HyperdomainError("domains() takes a list of prompts; use domain() for one")
        emb = self.embed(list(prompts), clip)
        meta = {"source_prompt": self.meta.get("source_prompt", DEFAULT_SOURCE_PROMPT), "hypernet_file": self.meta.get("file"),
                "clip_models": [self.text_encoder().label]}
        return [self.domain_from_embedding(e, prompt=q, **meta) for q, e in zip(prompts, emb)]

    def domain(self, prompt: str, clip: "str | ClipEncoder | None" = None) -> Domain:
        """The :class:`Domain` this network predicts for ``prompt``."""
        return self.domains([prompt], clip)[0]

    @torch.no_grad()
    def domain_from_embedding(self, emb: torch.Tensor, **meta: Any) -> Domain:
        """The :class:`Domain` for one embedding ``[input_dim]`` (eval mode: BatchNorm's running statistics)."""
        emb = torch.as_tensor(emb).reshape(1, -1)
        p = next(self.parameters())
        was_training = self.training
        try:
            self.eval()
            d = self(emb.to(device=p.device, dtype=p.dtype))[0]
        finally:
            self.train(was_training)
        keep = {k: v for k, v in self.meta.items() if k.startswith("generator") or k in ("resolution", "clip_model")}
        return Domain(d.float().cpu(), self.config.domain_dims, {**keep, "hypernet": True, **meta})

    # ----------------------------------------------------------------- checks
    def check_compatible(self, G: "Generator", fingerprint: bool = True) -> None:
        """Raise a one-line error when this network's domains do not fit ``G``.

        The layout (per-conv widths) must always match; with ``fingerprint`` the generator weights
        recorded in the network (when recorded) must be ``G``'s too.
        """
        mismatch = None
        if tuple(self.domain_dims) != tuple(G.domain_dims):
            mismatch = (f"makes domains of {self.config.num_domain_params} numbers in {len(self.domain_dims)} convs, "
                        f"but generator {G.name!r} needs {G.num_domain_params} in {len(G.domain_dims)} convs")
        check_fits("hypernetwork", self.meta, G, mismatch, fingerprint=fingerprint)

    # ----------------------------------------------------------------- files
    def save(self, path: str | os.PathLike, meta: Mapping[str, Any] | None = None) -> Path:
        """Write safetensors weights with the config and ``{**self.meta, **meta}`` as JSON metadata, atomically.

        ``self.meta`` is updated to what was written.
        """
        path = Path(path)
        merged = {**self.meta, **dict(meta or {})}
        try:
            meta_json = json.dumps(merged, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise HyperdomainError(f"{path}: hypernetwork metadata is not plain JSON data ({e})") from None
        header = {"config": json.dumps(self.config.to_dict()), "meta": meta_json}
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        write_own_file(path, HYPERNET, FORMAT_VERSION, tensors, header)
        self.meta = merged
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, generator: "Generator | None" = None,
             check: bool = True) -> "HyperDomainNet":
        """Rebuild a saved hypernetwork from its config and load its weights strictly (eval mode, CPU);
        with ``generator``, check that its domains fit it (layout, and fingerprint if ``check``)."""
        path = Path(path)
        header, tensors = read_own_file(path, HYPERNET, FORMAT_VERSION, "hypernetwork file")
        config_dict = json_field(path, header, "config", dict, "hypernetwork file")
        meta = json_field(path, header, "meta", dict, "hypernetwork file", default={})
        try:
            config = HyperConfig.from_dict(config_dict)
        except (KeyError, ValueError, TypeError) as e:
            raise HyperdomainError(f"{path}: malformed hypernetwork config ({e})") from None
        except HyperdomainError as e:
            raise HyperdomainError(f"{path}: {e}") from None
        for k, t in tensors.items():  # the weights must be finite (BatchNorm's step counter is an integer)
            if t.is_floating_point():
                float32_tensor(path, k, t, "hypernetwork file")
        net = cls(config, {**meta, "file": str(path)})
        dtype = next((t.dtype for t in tensors.values() if t.is_floating_point()), torch.float32)
        net.to(dtype)
        check_state(net, tensors, path)
        net.load_state_dict(tensors, strict=True)
        if generator is not None:
            net.check_compatible(generator, fingerprint=check)
        return net.eval()


def check_state(net: nn.Module, sd: Mapping[str, Any], path: Path) -> None:
    """One-line errors for a state dict whose keys or shapes are not ``net``'s."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        what = f"lacks {missing[0]!r}" if missing else f"has unexpected {unexpected[0]!r}"
        raise HyperdomainError(
            f"{path}: weights do not match the hypernetwork config ({what}; {len(missing)} missing, "
            f"{len(unexpected)} unexpected)")
    for k, t in expected.items():
        v = sd[k]
        if not isinstance(v, torch.Tensor) or tuple(v.shape) != tuple(t.shape):
            shape = list(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise HyperdomainError(f"{path}: {k} has shape {shape}, expected {list(t.shape)}")

