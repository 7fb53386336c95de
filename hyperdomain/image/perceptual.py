"""LPIPS with VGG (Zhang et al., 2018): the perceptual distance of inversion and one-shot adaptation.

The ``lpips`` package supplies the network and its calibrated linear layers (shipped inside it,
v0.1, the version the paper's code uses). The VGG16 backbone's ImageNet weights are torchvision's
file, fetched on first use like the generators (``vgg16`` in the manifest; taken from torch's own
download cache when it is already there) and read without unpickling code. ``backbone="random"``
builds the same network on a random VGG16 (seeded: the same one in every process): for tests,
and never for real use.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import HyperdomainError
from ..files.pretrained import resolve_model
from ..files.restricted_unpickler import load_torch_file


def load_lpips(device: str | torch.device = "cpu", backbone: str | os.PathLike = "imagenet") -> nn.Module:
    """A frozen LPIPS-VGG module: ``module(a, b)`` -> ``[B, 1, 1, 1]`` for images in ``[-1, 1]``.

    ``backbone``: "imagenet" (torchvision's VGG16 weights, downloaded on first use), the path of
    that file (``vgg16-397923af.pth``, for offline machines), or "random".
    """
    import lpips  # imported here: it pulls in scipy, which only the image features need

    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore", UserWarning)  # lpips builds torchvision's VGG with a deprecated argument
        torch.manual_seed(0)  # "random" is the same network in every process: a resumed run keeps its loss
        model = lpips.LPIPS(net="vgg", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    if str(backbone) != "random":
        path = resolve_model("vgg16") if str(backbone) == "imagenet" else Path(backbone)
        if not path.is_file():
            raise HyperdomainError(f"{path}: no such VGG16 weights file (torchvision's vgg16-397923af.pth)")
        load_vgg16_backbone(model.net, path)
    return model.eval().requires_grad_(False).to(device)


def load_vgg16_backbone(net: nn.Module, path: Path) -> None:
    """torchvision's VGG16 state dict (``features.{i}.*``) into LPIPS's sliced copy (``slice{k}.{i}.*``)."""
    sd = load_torch_file(path)
    if not isinstance(sd, dict):
        raise HyperdomainError(f"{path}: not a VGG16 state dict (found {type(sd).__name__})")
    mapped = {}
    for key in net.state_dict():
        _, index, param = key.split(".")  # slice{k}.{i}.{weight|bias}
        source = f"features.{index}.{param}"
        if source not in sd:
            raise HyperdomainError(f"{path}: not torchvision's VGG16 weights (no {source!r})")
        mapped[key] = sd[source]
    try:
        net.load_state_dict(mapped, strict=True)
    except RuntimeError as e:
        raise HyperdomainError(f"{path}: VGG16 weights do not fit ({str(e).splitlines()[0]})") from None


def lpips_distance(model: nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image LPIPS ``[B]`` between ``a`` and ``b`` ``[B, 3, H, W]`` in ``[-1, 1]``."""
    return model(a, b, normalize=False).reshape(a.shape[0])
