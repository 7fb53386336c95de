"""Frozen CLIP encoders (open_clip) for the losses: differentiable image path, cached text path.

A model is named by a spec string ``NAME[:TAG][=FILE]``:

- ``NAME``: an open_clip model name (``ViT-B-32``) or OpenAI's spelling (``ViT-B/32``), or the path
  of an open_clip model config JSON (``{"embed_dim", "vision_cfg", "text_cfg"}``, optionally under
  ``"model_cfg"`` as in ``open_clip_config.json``) for a custom architecture;
- ``TAG``: open_clip's pretrained tag, ``openai`` by default for named models;
- ``FILE``: a local weights file for offline machines (``.safetensors``, or a ``torch.save`` state
  dict read with ``weights_only=True``). Without it, named models come from open_clip's download
  cache (the Hugging Face Hub), config-JSON models start from random weights (tests, or fine-tuning
  experiments) with a warning.

Text embeddings follow the paper's code: each prompt is put into the templates, every template's
embedding is L2-normalised, and the *mean* over templates is kept (not re-normalised), so a text
direction ``T_trg - T_src`` is the mean of the per-template differences.

open_clip is imported where it is used: importing it takes seconds, and ``import hyperdomain``
should not pay for it before a CLIP model is needed.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from ..errors import HyperdomainError
from ..files.restricted_unpickler import load_torch_file

log = logging.getLogger(__name__)

__all__ = ["ClipSpec", "ClipEncoder", "load_clip", "check_models", "templates", "TEMPLATE_SETS", "DEFAULT_CLIP"]

DEFAULT_CLIP = ("ViT-B-32", "ViT-B-16")
# The template sets a prompt can be put into. "imagenet" is the paper's (StyleGAN-NADA's) list:
# OpenAI's 80 ImageNet templates without "a photo of many {}.", in OpenAI's order.
TEMPLATE_SETS = ("imagenet", "openai", "single", "none")
_NADA_DROPS = "a photo of many {}."


def templates(name: str) -> tuple[str, ...]:
    """The format strings (``"a photo of a {}."``) of a template set named in ``TEMPLATE_SETS``."""
    if name in ("imagenet", "openai"):
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        full = tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)
        return full if name == "openai" else tuple(t for t in full if t != _NADA_DROPS)
    if name == "single":  # StyleDomain's evaluation protocol
        return ("A {}",)
    if name == "none":
        return ("{}",)
    raise HyperdomainError(f"templates: expected one of {TEMPLATE_SETS}, got {name!r}")


# ------------------------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class ClipSpec:
    """A parsed ``NAME[:TAG][=FILE]`` model spec."""

    name: str  # open_clip name, or the path of a model config JSON
    tag: str | None = None  # open_clip pretrained tag (named models only)
    weights: str | None = None  # local weights file

    @classmethod
    def parse(cls, spec: str) -> "ClipSpec":
        if not isinstance(spec, str) or not spec.strip():
            raise HyperdomainError(f"--clip: expected NAME[:TAG][=FILE] (e.g. ViT-B-32 or ViT-B/32=weights.safetensors), got {spec!r}")
        head, sep, weights = spec.strip().partition("=")
        if sep and not weights:
            raise HyperdomainError(f"--clip {spec}: nothing after '=' (expected a weights file)")
        name, tag = head, None
        if not head.endswith(".json") and ":" in head:
            name, _, tag = head.partition(":")
            if not tag:
                raise HyperdomainError(f"--clip {spec}: empty pretrained tag after ':'")
        if name.endswith(".json"):
            return cls(name=name, tag=None, weights=weights or None)
        return cls(name=name.replace("/", "-"), tag=tag or "openai", weights=weights or None)

    @property
    def is_config_file(self) -> bool:
        return self.name.endswith(".json")

    def __str__(self) -> str:
        """The spec as text again: ``NAME[:TAG][=FILE]``."""
        tag = f":{self.tag}" if self.tag and not self.is_config_file else ""
        return f"{self.name}{tag}" + (f"={self.weights}" if self.weights else "")

    @property
    def label(self) -> str:
        """A short stable name recorded in artifacts (``ViT-B-32:openai``, ``tiny.json``)."""
        if self.is_config_file:
            return Path(self.name).name + ("" if self.weights else ":random")
        return f"{self.name}:{self.tag}"


def run_spec(clip: "str | ClipSpec | ClipEncoder") -> str:
    """What a run records for a CLIP model so that a resume loads the same one from any folder: the
    spec with absolute paths (an encoder's own, as :func:`load_clip` made it; its label when it was
    built by hand)."""
    if isinstance(clip, ClipEncoder):
        return clip.spec or clip.label
    return absolute_spec(str(clip))


def absolute_spec(spec: str) -> str:
    """``NAME[:TAG][=FILE]`` with FILE (and a config ``.json`` NAME) made absolute where they exist, so
    a run or a network that records the spec finds its files from any folder; names stay as given."""
    def absolute(p: str) -> str:
        return str(Path(p).resolve()) if p and Path(p).exists() else p

    head, sep, file = spec.partition("=")
    head = absolute(head) if head.endswith(".json") else head
    return head + (sep + absolute(file) if sep else "")


# ------------------------------------------------------------------------------------------ encoder
class ClipEncoder(nn.Module):
    """One frozen CLIP model: ``encode_images`` (differentiable) and ``text`` (cached).

    ``model`` is an open_clip model (``encode_image``, ``encode_text``); its preprocessing (image
    size, mean, std) is read from the model itself. ``antialias`` off matches the paper's code
    (torchvision's tensor resize of its day); on gives a cleaner 1024 -> 224 downsampling.
    """

    def __init__(self, model: nn.Module, tokenizer, label: str, antialias: bool = False,
                 precision: str = "auto", spec: str | None = None):
        super().__init__()
        from open_clip import get_model_preprocess_cfg

        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.label = label
        self.spec = spec  # the spec it was loaded from, paths absolute (what runs record); None: built by hand
        self.antialias = antialias
        if precision not in ("auto", "fp32", "fp16", "bf16"):
            raise HyperdomainError(f"clip precision must be auto, fp32, fp16 or bf16, got {precision!r}")
        self.precision = precision
        cfg = get_model_preprocess_cfg(model)
        size = cfg.get("size", 224)
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
        mean = cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))
        std = cfg.get("std", (0.26862954, 0.26130258, 0.27577711))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.context_length = int(getattr(tokenizer, "context_length", 77))
        self._text_cache: dict[tuple[str, tuple[str, ...]], torch.Tensor] = {}

    def train(self, mode: bool = True) -> "ClipEncoder":  # always frozen, always eval
        return super().train(False)

    @functools.cached_property
    def embed_dim(self) -> int:
        """The width of the embeddings (read once from one encoded prompt: open_clip's text towers differ)."""
        return int(self.encode_bare_text(["a"]).shape[1])

    @property
    def device(self) -> torch.device:
        return self.mean.device

    # ------------------------------------------------------------------ images
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Generator images ``[B, 3, H, W]`` nominally in ``[-1, 1]`` -> CLIP input (not clamped)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise HyperdomainError(f"images have shape {list(images.shape)}, expected [B, 3, H, W]")
        x = (images + 1) / 2
        h, w = x.shape[-2:]
        th, tw = self.image_size
        if (h, w) != (th, tw):
            # shorter side to the model's size, then a centre crop (torchvision's Resize + CenterCrop)
            scale = max(th / h, tw / w)
            nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=self.antialias)
            top, left = (nh - th) // 2, (nw - tw) // 2
            x = x[:, :, top:top + th, left:left + tw]
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings ``[B, E]`` (float32), differentiable w.r.t. ``images``."""
        x = self.preprocess(images)
        with self._autocast(x.device):
            e = self.model.encode_image(x)
        e = e.float()
        return e / e.norm(dim=-1, keepdim=True)

    def _autocast(self, device: torch.device):
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)
        if self.precision == "auto" and device.type == "cuda":
            dtype = torch.float16  # the paper's CLIP runs in fp16 on GPUs (OpenAI's weights' dtype)
        if dtype is None or device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=dtype)

    # ------------------------------------------------------------------ text
    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` including CLIP's start and end tokens."""
        enc = getattr(self.tokenizer, "encode", None)
        if enc is not None:
            return len(enc(text)) + 2
        tokens = self.tokenizer([text])[0]
        return int((tokens != 0).sum())

    def check_prompt(self, prompt: str, template_set: Sequence[str] = ("{}",), what: str = "prompt") -> None:
        """One-line error for an empty prompt or one that does not fit CLIP's context in every template."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise HyperdomainError(f"{what}: empty prompt")
        n = max(self.count_tokens(t.format(prompt)) for t in template_set)
        if n > self.context_length:
            bare = self.count_tokens(prompt) - 2
            raise HyperdomainError(
                f"{what} {prompt[:40]!r}{'...' if len(prompt) > 40 else ''} is too long for CLIP ({self.label}): "
                f"{bare} tokens, {n} with the longest template, context is {self.context_length}"
            )

    @torch.no_grad()
    def template_embeddings(self, prompt: str, template_set: Sequence[str], what: str = "prompt") -> torch.Tensor:
        """The L2-normalised embedding of ``prompt`` in each template ``[T, E]`` (cached).

        A prompt that does not fit is refused in one line that starts with ``what``.
        """
        key = (prompt, tuple(template_set))
        cached = self._text_cache.get(key)
        if cached is None:
            self.check_prompt(prompt, template_set, what=what)
            tokens = self.tokenizer([t.format(prompt) for t in template_set]).to(self.device)
            e = self.model.encode_text(tokens).float()
            cached = e / e.norm(dim=-1, keepdim=True)
            self._text_cache[key] = cached
        return cached.to(self.device)  # the encoder may have moved since

    def text(self, prompt: str, template_set: Sequence[str], what: str = "prompt") -> torch.Tensor:
        """The mean over ``template_set`` of the L2-normalised text embeddings of ``prompt`` ``[E]``."""
        return self.template_embeddings(prompt, template_set, what).mean(0)

    @torch.no_grad()
    def encode_bare_text(self, prompts: Sequence[str], what: Sequence[str] | None = None) -> torch.Tensor:
        """L2-normalised embeddings ``[N, E]`` of the bare prompts (no templates).

        ``what[i]`` starts the one-line error for a prompt that does not fit (default "prompt").
        """
        for p, w in zip(prompts, what or ["prompt"] * len(prompts)):
            self.check_prompt(p, what=w)
        e = self.model.encode_text(self.tokenizer(list(prompts)).to(self.device)).float()
        return e / e.norm(dim=-1, keepdim=True)


# ------------------------------------------------------------------------------------------ loading
def load_clip(specs: Sequence[str | ClipSpec | ClipEncoder] = DEFAULT_CLIP,
              device: str | torch.device = "cpu", antialias: bool = False,
              precision: str = "auto") -> list[ClipEncoder]:
    """Frozen encoders for the given specs (see the module docstring); encoders pass through."""
    if isinstance(specs, (str, ClipSpec, ClipEncoder)):
        specs = [specs]
    if not specs:
        raise HyperdomainError("--clip: at least one CLIP model is needed")
    out = []
    for s in specs:
        if isinstance(s, ClipEncoder):
            out.append(s.to(device))
            continue
        spec = s if isinstance(s, ClipSpec) else ClipSpec.parse(s)
        model, tokenizer = _build(spec)
        out.append(ClipEncoder(model, tokenizer, spec.label, antialias=antialias, precision=precision,
                               spec=absolute_spec(str(spec))).to(device))
    labels = [e.label for e in out]
    if len(set(labels)) != len(labels):
        raise HyperdomainError(f"--clip: the same model is named twice ({labels})")
    return out


def check_models(encoders: Sequence[ClipEncoder], specs: Sequence[str], what: str = "--clip") -> None:
    """One-line error unless ``encoders`` are the models ``specs`` name (specs or labels, in order)."""
    labels = [e.label for e in encoders]
    expected = []
    for s in specs:
        if s in labels:
            expected.append(s)
            continue
        try:
            expected.append(ClipSpec.parse(s).label)
        except HyperdomainError:
            expected.append(s)
    if labels != expected:
        raise HyperdomainError(f"{what}: these models {labels} are not the run's {expected}")


def _build(spec: ClipSpec):
    import open_clip

    if spec.is_config_file:
        cfg = _read_model_config(spec.name)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)  # random weights are the same on every load (resumable runs)
                model = open_clip.CLIP(**cfg)
        except TypeError as e:
            raise HyperdomainError(f"{spec.name}: not an open_clip model config ({e})") from None
        tokenizer = open_clip.SimpleTokenizer(context_length=cfg["text_cfg"].get("context_length", 77))
        if spec.weights:
            _load_weights(model, spec.weights)
        else:
            log.warning("CLIP %s has random weights (no =FILE given): fine for tests, meaningless for adaptation",
                        spec.name)
        return model, tokenizer

    if spec.name not in open_clip.list_models():
        raise HyperdomainError(
            f"--clip {spec.name}: unknown model; open_clip knows e.g. ViT-B-32, ViT-B-16, ViT-L-14 "
            f"(OpenAI spellings like ViT-B/32 work too)"
        )
    tokenizer = open_clip.get_tokenizer(spec.name)
    # OpenAI's weights were trained with QuickGELU; open_clip's plain configs build GELU
    quick_gelu = bool((open_clip.get_pretrained_cfg(spec.name, spec.tag or "openai") or {}).get("quick_gelu"))
    if spec.weights:
        with _quiet_root_warning("No pretrained weights loaded"):  # true, and the file's weights come next
            model = open_clip.create_model(spec.name, pretrained=None, load_weights=False, force_quick_gelu=quick_gelu)
        _set_openai_preprocess(model, spec)
        _load_weights(model, spec.weights)
        return model, tokenizer
    cached = _cached_weights(spec)
    try:
        if cached is not None:  # read from the cache without asking the network
            model = open_clip.create_model(spec.name, pretrained=cached, force_quick_gelu=quick_gelu)
            _set_openai_preprocess(model, spec)
        else:
            model = open_clip.create_model(spec.name, pretrained=spec.tag, force_quick_gelu=quick_gelu)
    except RuntimeError as e:
        raise HyperdomainError(
            f"--clip {spec.name}:{spec.tag}: cannot get the weights ({str(e).splitlines()[0][:160]}); offline, "
            f"pass a local file: --clip {spec.name}=/path/open_clip_model.safetensors"
        ) from None
    return model, tokenizer


HUB_PROBE_TIMEOUT = 3.0  # seconds to reach the Hugging Face hub before calling it offline


def _cached_weights(spec: ClipSpec) -> str | None:
    """The tag's weights in the Hugging Face cache, or None when they must be downloaded and the hub
    answers; a one-line error at once when it does not.

    Offline, huggingface_hub retries each of open_clip's requests for about a minute and prints a
    warning per retry before failing; one short connection attempt says the same in seconds.
    """
    from open_clip import get_pretrained_cfg

    hub = (get_pretrained_cfg(spec.name, spec.tag or "openai") or {}).get("hf_hub", "")
    if not hub:
        return None  # a URL download (or an unknown tag, which open_clip names)
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    repo, filename = os.path.split(hub)
    filename = filename or "open_clip_pytorch_model.bin"
    stem = filename.rsplit(".", 1)[0]
    for name in ("open_clip_model.safetensors", stem + ".safetensors", filename):
        found = try_to_load_from_cache(repo, name)
        if isinstance(found, str):
            return found
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    host = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").split("://")[-1].split("/")[0]
    why = "HF_HUB_OFFLINE is set" if offline else _unreachable(host)
    if why:
        raise HyperdomainError(
            f"--clip {spec.name}:{spec.tag or 'openai'}: the weights are not downloaded yet and {why}; offline, "
            f"pass a local file: --clip {spec.name}=/path/open_clip_model.safetensors (from huggingface.co/{repo} "
            f"on another machine), or run once with network access to cache them"
        )
    return None


def _unreachable(host: str) -> str:
    """Why ``host`` cannot be reached on port 443 ('' when it can)."""
    import socket

    try:
        socket.create_connection((host, 443), timeout=HUB_PROBE_TIMEOUT).close()
    except OSError as e:
        return f"{host} cannot be reached ({e.strerror or type(e).__name__})"
    return ""


@contextlib.contextmanager
def _quiet_root_warning(prefix: str):
    """Drop open_clip's root-logger records that start with ``prefix`` for the duration (and only those)."""
    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(prefix)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _set_openai_preprocess(model, spec: ClipSpec) -> None:
    """A model built without its tag still gets the tag's mean/std (the weights were trained with them)."""
    from open_clip import get_pretrained_cfg
    from open_clip.model import set_model_preprocess_cfg

    cfg = get_pretrained_cfg(spec.name, spec.tag or "openai")
    if cfg and "mean" in cfg:
        from open_clip import get_model_preprocess_cfg

        pp = {**get_model_preprocess_cfg(model), "mean": cfg["mean"], "std": cfg["std"]}
        set_model_preprocess_cfg(model, pp)


def _read_model_config(path: str) -> dict:
    p = Path(path)
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise HyperdomainError(f"{p}: cannot read CLIP model config ({e.strerror or e})") from None
    except ValueError as e:
        raise HyperdomainError(f"{p}: CLIP model config is not valid JSON ({e})") from None
    cfg = cfg.get("model_cfg", cfg) if isinstance(cfg, dict) else cfg
    if not isinstance(cfg, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(cfg):
        raise HyperdomainError(f"{p}: CLIP model config needs embed_dim, vision_cfg and text_cfg")
    return cfg


def _load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """A local weights file, read without running pickled code."""
    p = Path(path)
    if not p.is_file():
        raise HyperdomainError(f"{p}: no such CLIP weights file")
    if p.suffix == ".safetensors":
        try:
            sd = load_file(str(p))
        except Exception as e:  # safetensors' own error types
            raise HyperdomainError(f"{p}: not a readable safetensors file ({e})") from None
    else:
        if _is_torchscript(p):
            raise HyperdomainError(
                f"{p}: OpenAI's TorchScript archive is not read (loading it runs its code); use the "
                f"safetensors weights open_clip downloads (e.g. timm/vit_base_patch32_clip_224.openai "
                f"open_clip_model.safetensors on the Hugging Face Hub)"
            )
        sd = load_torch_file(p)
        if isinstance(sd, dict) and "state_dict" in sd:
            sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise HyperdomainError(f"{p}: expected a state dict of tensors, got {type(sd).__name__}")
    sd = {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}
    from open_clip.factory import convert_state_dict

    sd = convert_state_dict(model, sd)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        what = (f"missing {missing[:3]}" if missing else "") + (f" unexpected {unexpected[:3]}" if unexpected else "")
        raise HyperdomainError(f"{p}: weights do not fit this CLIP architecture ({what.strip()})")


def _is_torchscript(p: Path) -> bool:
    if not zipfile.is_zipfile(p):
        return False
    with zipfile.ZipFile(p) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
