"""Tiny models and a running app for the web-app tests (tests/test_serve*.py)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from conftest import make_tiny_generator

PROMPT = "Anime painting"


@dataclass
class TinyFiles:
    generator: Path
    domain: Path
    foreign_domain: Path
    hyper: Path
    clip_config: Path
    photo: Path
    broken: Path
    encoder: Path
    translator: Path


def make_files(folder: Path, clip_config: Path) -> TinyFiles:
    """A tiny generator checkpoint, a domain file for it and one for another generator, a tiny
    hypernetwork (prompts embedded by the tiny random CLIP), a photo and a broken "photo"."""
    import hyperdomain as hd
    from hyperdomain.model.hypernet import HyperConfig, HyperDomainNet

    folder.mkdir(parents=True, exist_ok=True)
    G = make_tiny_generator()
    gen = folder / "tiny.pt"
    torch.save({"g_ema": G.state_dict(), "latent_avg": torch.zeros(G.w_dim),
                "args": argparse.Namespace(size=32, channel_multiplier=2)}, gen)
    G = hd.load_generator(gen)
    torch.manual_seed(1)
    domain = hd.Domain(0.3 * torch.randn(G.num_domain_params), G.domain_dims,
                       {"generator": G.name, "generator_fingerprint": G.fingerprint, "prompt": "Sketch"})
    domain.save(folder / "sketch.safetensors")
    hd.Domain(torch.zeros(10), (10,), {"generator": "big"}).save(folder / "big.safetensors")
    torch.manual_seed(2)
    net = HyperDomainNet(HyperConfig(domain_dims=G.domain_dims, input_dim=32, width=16, block_width=16),
                         meta={"generator": G.name, "generator_fingerprint": G.fingerprint})
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)  # domains far enough from zero to change the images visibly
    net.save(folder / "hdn.safetensors")
    photo = folder / "face.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (80, 72, 3), dtype=np.uint8)).save(photo)
    broken = folder / "notes.png"
    broken.write_text("this is not an image\n")
    return TinyFiles(gen, folder / "sketch.safetensors", folder / "big.safetensors", folder / "hdn.safetensors",
                     Path(clip_config), photo, broken, tiny_encoder(G, folder / "e4e.safetensors"),
                     tiny_translator(G, folder / "sketchy.safetensors"))


def tiny_translator(G, path: Path) -> Path:
    """A translator for the tiny generator: a small U-Net whose last conv is random (not the identity)."""
    from torch import nn

    from hyperdomain.image.translators import TranslatorConfig, build_translator, save_translator

    torch.manual_seed(4)
    config = TranslatorConfig(size=32, encoder="tu-resnet10t", encoder_depth=3, decoder_channels=(16, 16, 8))
    net = build_translator(config)
    head = [m for m in net.modules() if isinstance(m, nn.Conv2d)][-1]
    with torch.no_grad():
        head.weight.normal_(0, 0.3)
    return save_translator(path, net, config, "paired", {"fingerprint": G.fingerprint, "name": G.name,
                                                         "resolution": G.resolution}, "0" * 64)


def tiny_encoder(G, path: Path) -> Path:
    """An untrained e4e for the tiny generator (32 px input, 32-number styles), saved as an encoder file."""
    from hyperdomain.image.encoders import EncoderConfig, PhotoEncoder, save_encoder

    torch.manual_seed(3)
    config = EncoderConfig("e4e", n_styles=G.num_ws, input_size=32, w_dim=G.w_dim, widths=(16, 16, 32, 32),
                           units=(1, 1, 1, 1))
    enc = PhotoEncoder(config)
    enc.latent_avg = G.mean_latent()[None].repeat(G.num_ws, 1).clone()
    return save_encoder(path, enc, G.fingerprint, source="random")


def load_app_models(files: TinyFiles, work_dir: Path):
    from hyperdomain.image.inversion import InversionConfig
    from hyperdomain.webapp import load_models

    return load_models(files.generator, [files.domain], hyper=files.hyper, hyper_clip=str(files.clip_config),
                       clip=[str(files.clip_config)], lpips_backbone="random", align=False,
                       inversion=InversionConfig(steps=3, pca_samples=300), encoder=files.encoder,
                       translators=[files.translator], work_dir=work_dir,
                       device="cpu")


def expected_grid(files: TinyFiles, count: int, seed: int, truncation: float, strength: float,
                  prompt: str | None = PROMPT, second: Path | None = None, mix: float = 0.0) -> np.ndarray:
    """What the Python API renders for the Explore panel's settings, from freshly loaded files."""
    import hyperdomain as hd

    G = hd.load_generator(files.generator)
    d = None
    if prompt is not None:
        d = hd.HyperDomainNet.load(files.hyper, generator=G).domain(prompt, clip=str(files.clip_config))
    if second is not None:
        d = hd.mix([d if d is not None else hd.Domain.zeros(G), hd.Domain.load(second, generator=G)], [1 - mix, mix])
    if d is not None:
        d = d.scaled(strength)
    return hd.make_grid(G.sample(count, domain=d, truncation=truncation, seed=seed)).numpy()


def read_rgb(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))
