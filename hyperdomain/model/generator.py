"""The frozen StyleGAN2 generator with per-sample domain modulation."""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Union

import torch
from torch import nn

from .config import DEFAULT_SOURCE_PROMPT, GeneratorConfig
from .domain import Domain
from ..errors import HyperdomainError
from ..files.generator_files import read_generator_file
from ..files.pretrained import ManifestEntry, resolve
from .layers import ConstantInput, EqualLinear, PixelNorm, StyledConv, ToRGB

log = logging.getLogger(__name__)

DomainArg = Union[None, Domain, torch.Tensor]
NOISE_MODES = ("const", "random", "none")
MEAN_LATENT_SAMPLES = 10_000


class Generator(nn.Module):
    """StyleGAN2 (the PyTorch port's layout) whose modulated convs take a domain vector.

    Call ``G(z, domain=None, truncation=1.0, noise_mode="const")`` for raw images
    ``[B, 3, H, W]``, nominally in ``[-1, 1]`` and never clamped. ``domain`` is ``None``, a
    :class:`Domain`, a ``(D,)`` tensor (one domain for the batch) or a ``(B, D)`` tensor (one per
    sample). Load pretrained weights with :func:`load_generator`.
    """

    def __init__(self, config: GeneratorConfig, name: str = "random"):
        super().__init__()
        self.config = config
        self.name = name
        c = config
        ch = c.channels
        self.style = nn.ModuleList(
            [PixelNorm()] + [EqualLinear(c.style_dim, c.style_dim, lr_mul=c.lr_mlp, lrelu=True) for _ in range(c.n_mlp)]
        )
        self.input = ConstantInput(ch[0])
        self.conv1 = StyledConv(ch[0], ch[0], c.style_dim, upsample=False, clamp=c.conv_clamp)
        self.to_rgb1 = ToRGB(ch[0], c.style_dim, upsample=False, clamp=c.conv_clamp)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        for i in range(1, len(ch)):
            self.convs.append(StyledConv(ch[i - 1], ch[i], c.style_dim, upsample=True, clamp=c.conv_clamp))
            self.convs.append(StyledConv(ch[i], ch[i], c.style_dim, upsample=False, clamp=c.conv_clamp))
            self.to_rgbs.append(ToRGB(ch[i], c.style_dim, upsample=True, clamp=c.conv_clamp))
        self.noises = nn.Module()
        for k in range(c.num_convs):
            res = 4 * 2 ** ((k + 1) // 2)
            self.noises.register_buffer(f"noise_{k}", torch.randn(1, 1, res, res))
        self.register_buffer("latent_avg", torch.zeros(c.style_dim), persistent=False)
        self._has_latent_avg = False
        self._fingerprint: str | None = None
        self._warned_fingerprint = False
        self.source_prompt = DEFAULT_SOURCE_PROMPT
        self.adapt_defaults: dict = {}  # the manifest's paper recipe for adapt (iters, batch, lr, ...), if any
        self.alignment: str | None = None  # "ffhq" for face generators: photos are aligned as FFHQ was

    # ----------------------------------------------------------------- facts
    @property
    def resolution(self) -> int:
        return self.config.resolution

    @property
    def z_dim(self) -> int:
        return self.config.style_dim

    @property
    def w_dim(self) -> int:
        return self.config.style_dim

    @property
    def num_ws(self) -> int:
        return self.config.num_ws

    @property
    def domain_dims(self) -> tuple[int, ...]:
        return self.config.domain_dims

    @property
    def num_domain_params(self) -> int:
        return sum(self.domain_dims)

    @property
    def device(self) -> torch.device:
        return self.input.input.device

    @property
    def fingerprint(self) -> str:
        """A stable short hash of the weights (parameters and noise buffers, by key)."""
        if self._fingerprint is None:
            self._fingerprint = state_fingerprint(self.state_dict())
        return self._fingerprint

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self._fingerprint = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ----------------------------------------------------------------- latents
    def mapping(self, z: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        """``z [B, z_dim] -> w [B, w_dim]``, truncated towards the mean latent when ``truncation < 1``."""
        _check_shape(z, (None, self.z_dim), "z")
        w = z
        for layer in self.style:
            w = layer(w)
        if truncation != 1.0:
            avg = self.mean_latent()
            w = avg + truncation * (w - avg)
        return w

    @torch.no_grad()
    def mean_latent(self) -> torch.Tensor:
        """The checkpoint's ``latent_avg``, else the mean of many mapped z (fixed seed), computed once."""
        if not self._has_latent_avg:
            gen = torch.Generator().manual_seed(0)
            z = torch.randn(MEAN_LATENT_SAMPLES, self.z_dim, generator=gen)
            total = torch.zeros(self.w_dim, device=self.device)
            for chunk in z.split(1000):
                w = chunk.to(self.device)
                for layer in self.style:
                    w = layer(w)
                total += w.sum(0)
            self.latent_avg.copy_(total / MEAN_LATENT_SAMPLES)
            self._has_latent_avg = True
        return self.latent_avg

    def set_latent_avg(self, latent_avg: torch.Tensor | None) -> None:
        if latent_avg is None:
            self._has_latent_avg = False
            return
        _check_shape(latent_avg.reshape(-1), (self.w_dim,), "latent_avg")
        with torch.no_grad():
            self.latent_avg.copy_(latent_avg.reshape(-1))
        self._has_latent_avg = True

    def style_mix(self, w1: torch.Tensor, w2: torch.Tensor, crossover: int | torch.Tensor) -> torch.Tensor:
        """W+ ``[B, num_ws, w_dim]`` taking ``w1`` for layers ``< crossover`` and ``w2`` from there on.

        ``crossover`` is an int or a ``[B]`` tensor (one crossover per sample).
        """
        _check_shape(w1, (None, self.w_dim), "w1")
        _check_shape(w2, tuple(w1.shape), "w2")
        layer = torch.arange(self.num_ws, device=w1.device)[None, :]  # [1, L]
        cross = torch.as_tensor(crossover, device=w1.device).reshape(-1, 1)  # [B or 1, 1]
        take_first = (layer < cross)[:, :, None]
        return torch.where(take_first, w1[:, None, :], w2[:, None, :])

    # ----------------------------------------------------------------- synthesis
    def synthesis(self, ws: torch.Tensor, domain: DomainArg = None, noise_mode: str = "const",
                  noise_generator: torch.Generator | None = None,
                  noise: "list[torch.Tensor] | None" = None) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` from W ``[B, w_dim]`` or W+ ``[B, num_ws, w_dim]``.

        ``noise`` (one tensor per conv, e.g. from :meth:`draw_noise`) overrides ``noise_mode``: a
        caller that draws its own noise, such as a trainer drawing each step's from its seeded
        generator, passes it here.
        """
        if ws.ndim == 2:
            _check_shape(ws, (None, self.w_dim), "ws")
            ws = ws[:, None, :].expand(-1, self.num_ws, -1)
        _check_shape(ws, (None, self.num_ws, self.w_dim), "ws")
        if noise_mode not in NOISE_MODES:
            raise HyperdomainError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        b = ws.shape[0]
        blocks = self._domain_blocks(domain, b, ws.device, ws.dtype)
        if noise is None:
            noise = [self._noise(k, b, noise_mode, noise_generator, ws) for k in range(self.config.num_convs)]
        elif len(noise) != self.config.num_convs:
            raise HyperdomainError(f"noise: expected {self.config.num_convs} tensors (one per conv), got {len(noise)}")

        x = self.input(b)
        x = self.conv1(x, ws[:, 0], noise[0], blocks[0])
        skip = self.to_rgb1(x, ws[:, 1])
        for j, to_rgb in enumerate(self.to_rgbs):
            k = 2 * j + 1  # index of the upsampling conv among all modulated convs
            x = self.convs[2 * j](x, ws[:, k], noise[k], blocks[k])
            x = self.convs[2 * j + 1](x, ws[:, k + 1], noise[k + 1], blocks[k + 1])
            skip = to_rgb(x, ws[:, k + 2], skip)
        return skip

    def forward(self, z: torch.Tensor, domain: DomainArg = None, truncation: float = 1.0,
                noise_mode: str = "const") -> torch.Tensor:
        return self.synthesis(self.mapping(z, truncation), domain=domain, noise_mode=noise_mode)

    @torch.no_grad()
    def sample(self, n: int, domain: DomainArg = None, truncation: float = 0.7, seed: int = 0,
               batch_size: int = 8, noise_mode: str = "const", style: torch.Tensor | None = None,
               mix_from: int = 7, on_batch: Callable[[int], Any] | None = None) -> torch.Tensor:
        """``n`` images ``[n, 3, H, W]`` (float32, on the CPU) from seeded latents.

        The latents depend only on ``seed`` and ``n`` (drawn on the CPU), never on the device or
        on ``batch_size``. ``style`` (W+ ``[num_ws, w_dim]``, e.g. an inverted reference image's
        latent) replaces the layers from ``mix_from`` on: the samples' coarse structure with the
        reference's fine style, as in the paper's one-shot results. ``on_batch(k)`` is called after
        each batch of ``k`` images (e.g. a progress bar's ``update``).
        """
        if n < 1 or batch_size < 1:
            raise HyperdomainError(f"sample: n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
        if style is not None:
            _check_shape(style, (self.num_ws, self.w_dim), "style latent")
            if not 1 <= mix_from < self.num_ws:
                raise HyperdomainError(f"mix_from {mix_from}: must be in [1, {self.num_ws - 1}] for this generator")
        gen = torch.Generator().manual_seed(int(seed))
        z = torch.randn(n, self.z_dim, generator=gen)
        dom = self._domain_matrix(domain, n, torch.device("cpu"), torch.float32)
        out = []
        for start in range(0, n, batch_size):
            zb = z[start:start + batch_size].to(self.device)
            db = None if dom is None else dom[start:start + batch_size].to(self.device)
            ws = self.mapping(zb, truncation)
            if style is not None:
                ws = ws[:, None].repeat(1, self.num_ws, 1)
                ws[:, mix_from:] = style[mix_from:].to(ws)
            out.append(self.synthesis(ws, db, noise_mode=noise_mode, noise_generator=gen).float().cpu())
            if on_batch is not None:
                on_batch(len(zb))
        return torch.cat(out)

    def draw_noise(self, b: int, generator: torch.Generator | None = None,
                   device: torch.device | None = None) -> list[torch.Tensor]:
        """Per-sample random noise ``[b, 1, r, r]`` for every conv, drawn on the CPU when seeded."""
        like = torch.empty(0, device=device or self.device)
        return [self._noise(k, b, "random", generator, like) for k in range(self.config.num_convs)]

    # ----------------------------------------------------------------- helpers
    def _domain_matrix(self, domain: DomainArg, b: int, device, dtype) -> torch.Tensor | None:
        """``domain`` as ``[B, D]`` (or None)."""
        if domain is None:
            return None
        if isinstance(domain, Domain):
            # the layout must fit; the fingerprint is checked where a domain is loaded for a
            # generator (Domain.load(path, generator=G)), so check=False there is honoured here
            domain.check_compatible(self, fingerprint=False)
            fp = domain.meta.get("generator_fingerprint")
            if fp and fp != self.fingerprint and not self._warned_fingerprint:
                log.warning("domain %s was trained for generator fingerprint %s, this one is %s",
                            domain.meta.get("prompt") or domain.meta.get("file") or "", fp, self.fingerprint)
                self._warned_fingerprint = True
            domain = domain.vector
        if not isinstance(domain, torch.Tensor):
            raise HyperdomainError(f"domain must be None, a Domain or a tensor, got {type(domain).__name__}")
        d = self.num_domain_params
        if domain.ndim == 1:
            _check_shape(domain, (d,), "domain")
            domain = domain[None].expand(b, -1)
        else:
            _check_shape(domain, (b, d), "domain")
        return domain.to(device=device, dtype=dtype)

    def _domain_blocks(self, domain: DomainArg, b: int, device, dtype) -> list[torch.Tensor | None]:
        m = self._domain_matrix(domain, b, device, dtype)
        if m is None:
            return [None] * self.config.num_convs
        return list(torch.split(m, list(self.domain_dims), dim=1))

    def _noise(self, k: int, b: int, mode: str, gen: torch.Generator | None, like: torch.Tensor):
        if mode == "none":
            return None
        buf = getattr(self.noises, f"noise_{k}")
        if mode == "const":
            return buf
        shape = (b, 1, buf.shape[2], buf.shape[3])
        if gen is not None:  # seeded: drawn on the CPU so results do not depend on the device
            return torch.randn(shape, generator=gen).to(like.device, like.dtype)
        return torch.randn(shape, device=like.device, dtype=like.dtype)


def state_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over (key, dtype, shape, bytes) of every tensor, keys sorted; first 16 hex digits."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _check_shape(t: torch.Tensor, expected: tuple, what: str) -> None:
    """Fail at the boundary with both shapes (``None`` in ``expected`` matches any size)."""
    ok = t.ndim == len(expected) and all(e is None or e == s for e, s in zip(expected, t.shape))
    if not ok:
        exp = "[" + ", ".join("*" if e is None else str(e) for e in expected) + "]"
        raise HyperdomainError(f"{what} has shape {list(t.shape)}, expected {exp}")


# --------------------------------------------------------------------- loading
def config_from_state_dict(sd: Mapping[str, torch.Tensor], where: str = "checkpoint",
                           conv_clamp: float | None = None) -> GeneratorConfig:
    """Read size, style dim, mapping depth and every width from the tensors' shapes."""
    def need(key: str) -> torch.Tensor:
        if key not in sd:
            raise HyperdomainError(f"{where}: not a StyleGAN2 generator in the PyTorch port's format (no {key!r})")
        return sd[key]

    style_dim = need("style.1.weight").shape[1]
    n_mlp = 0
    while f"style.{n_mlp + 1}.weight" in sd:
        n_mlp += 1
    c4 = need("input.input")
    if c4.ndim != 4 or tuple(c4.shape[2:]) != (4, 4):
        raise HyperdomainError(f"{where}: input.input has shape {list(c4.shape)}, expected [1, C, 4, 4]")
    channels = [c4.shape[1]]
    n_up = 0
    while f"to_rgbs.{n_up}.conv.weight" in sd:
        n_up += 1
    for j in range(n_up):
        w = need(f"convs.{2 * j}.conv.weight")
        channels.append(w.shape[1])
    resolution = 4 * 2**n_up
    # noise buffers pin the resolution: a non-power-of-two or inconsistent size is refused here
    last = sd.get(f"noises.noise_{2 * n_up}")
    if last is not None and tuple(last.shape[2:]) != (resolution, resolution):
        raise HyperdomainError(
            f"{where}: last noise buffer is {list(last.shape[2:])} but the layers give a "
            f"{resolution}x{resolution} generator (size must be a power of two)"
        )
    return GeneratorConfig(resolution=resolution, style_dim=style_dim, n_mlp=n_mlp,
                           channels=tuple(channels), conv_clamp=conv_clamp)


def generator_from_state(sd: Mapping[str, torch.Tensor], latent_avg: torch.Tensor | None = None,
                         name: str = "generator", where: str = "checkpoint",
                         conv_clamp: float | None = None) -> Generator:
    """Build a frozen, eval-mode generator from a port-format ``g_ema`` state dict."""
    config = config_from_state_dict(sd, where, conv_clamp)
    with torch.device("meta"):
        G = Generator(config, name=name)
    expected = G.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        raise HyperdomainError(f"{where}: generator state dict does not match the inferred {config.resolution} px "
                               f"architecture: " + "; ".join(parts))
    for k, t in expected.items():
        if tuple(sd[k].shape) != tuple(t.shape):
            raise HyperdomainError(f"{where}: {k} has shape {list(sd[k].shape)}, expected {list(t.shape)}")
        if not sd[k].is_floating_point():
            raise HyperdomainError(f"{where}: {k} is {str(sd[k].dtype).replace('torch.', '')}, expected floating point")
    bad = {k: int((~torch.isfinite(v)).sum()) for k, v in sd.items()}
    bad.update({"latent_avg": int((~torch.isfinite(latent_avg)).sum())} if latent_avg is not None else {})
    bad = {k: n for k, n in bad.items() if n}
    if bad:
        first = next(iter(bad))
        raise HyperdomainError(f"{where}: the generator holds {sum(bad.values())} non-finite numbers (NaN or inf), "
                               f"{bad[first]} in {first}" + (f" and more in {len(bad) - 1} other tensors" if len(bad) > 1 else ""))
    G.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True, assign=True)
    G.latent_avg = torch.zeros(config.style_dim)  # replace the meta buffer
    G.set_latent_avg(None if latent_avg is None else latent_avg.float())
    G.requires_grad_(False)
    return G.eval()


def _few(keys: list[str], n: int = 5) -> str:
    return str(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def load_generator(name_or_path: str | os.PathLike, device: str | torch.device = "cpu",
                   download: bool = True) -> Generator:
    """A frozen generator from a manifest name (``"ffhq"``) or a checkpoint path.

    Reads the PyTorch port's checkpoints (``{"g_ema": ..., "latent_avg"?}``, full training
    checkpoints too) and NVIDIA's StyleGAN2-ADA/StyleGAN3 network pickles, both without running
    pickled code. Names are downloaded on first use (see :func:`hyperdomain.download`).
    """
    path, entry = resolve(name_or_path, download=download)
    ckpt = read_generator_file(path)
    name = entry.name if entry is not None else Path(path).stem
    G = generator_from_state(ckpt["g_ema"], ckpt.get("latent_avg"), name=name, where=str(path),
                             conv_clamp=ckpt.get("conv_clamp"))
    if entry is not None:
        _check_entry(G, entry, path)
        G.source_prompt = entry.source_prompt
        G.adapt_defaults = dict(entry.adapt or {})
        G.alignment = entry.align
    return G.to(device)


def _check_entry(G: Generator, entry: ManifestEntry, path) -> None:
    if entry.resolution and entry.resolution != G.resolution:
        raise HyperdomainError(
            f"{path}: manifest entry {entry.name!r} says {entry.resolution} px but the file holds a "
            f"{G.resolution} px generator"
        )
