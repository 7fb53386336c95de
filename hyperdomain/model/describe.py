"""What a file holds, for `hyperdomain info`: a domain, a hypernetwork, a run checkpoint, a generator,
or a paper checkpoint."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from .domain import Domain
from ..errors import HyperdomainError
from .generator import generator_from_state
from .hypernet import HyperDomainNet
from .latent import Latent
from ..files.generator_files import from_port, read_generator_file
from ..files.restricted_unpickler import load_torch_file_omegaconf, sniff
from ..files.run_checkpoints import read_checkpoint_meta
from ..files.safetensors_files import ENCODER, GENERATOR, HYPERNET, LATENT, TRANSLATOR, checkpoint_kind, \
    read_safetensors

# the command that continues each trainer's runs
_RESUME_COMMANDS = {"adapt": "adapt", "image": "adapt", "hyper": "train-hyper", "encoder": "train-encoder",
                    "translator": "translator train"}


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """An ordered dict of facts about ``path`` (read without running any pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise HyperdomainError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        fmt = read_safetensors(path, "file", load=False)[0].get("format")
        if fmt == HYPERNET:
            return _describe_hypernet(path)
        if fmt == LATENT:
            return _describe_latent(path)
        if fmt == GENERATOR:
            return _describe_generator(path, read_generator_file(path))
        if fmt == ENCODER:
            return _describe_encoder(path)
        if fmt == TRANSLATOR:
            return _describe_translator(path)
        kind = checkpoint_kind(fmt)
        if kind in _RESUME_COMMANDS:
            return _describe_run_checkpoint(path, kind)
        return _describe_domain(path)
    if sniff(path) != "pickle":
        obj = load_torch_file_omegaconf(path)  # the paper's hypernetworks pickle OmegaConf configs
        if isinstance(obj, Mapping) and "model_type" in obj:
            return _describe_paper(path, obj)
        from ..image.encoders.official import is_release

        if is_release(obj):
            opts = obj["opts"] if isinstance(obj["opts"], Mapping) else {}
            return {"file": str(path), "kind": "e4e / ReStyle encoder release (hyperdomain import, or invert --encoder "
                                               "FILE)",
                    "encoder_type": opts.get("encoder_type", "?"),
                    "decoder": "yes" if any(str(k).startswith("decoder.") for k in obj["state_dict"]) else "no"}
        return _describe_generator(path, from_port(obj, path))  # read once: these files are large
    return _describe_generator(path, read_generator_file(path))


def _describe_encoder(path: Path) -> dict[str, Any]:
    from ..image.encoders import load_encoder

    enc = load_encoder(path)
    c = enc.config
    return {"file": str(path), "kind": f"{c.kind} encoder (photo to W+)", "W+": f"[{c.n_styles}, 512]",
            "input": f"{c.input_size} px", "passes": c.n_iters,
            "generator_fingerprint": enc.meta["generator_fingerprint"], "source": enc.meta.get("source", "")}


def _describe_domain(path: Path) -> dict[str, Any]:
    d = Domain.load(path)
    v = d.vector
    out: dict[str, Any] = {"file": str(path), "kind": "domain", "numbers": len(d), "convs": len(d.dims),
                           "per-conv widths": list(d.dims),
                           "|d| max / mean": f"{v.abs().max():.4g} / {v.abs().mean():.4g}"}
    if d.style_latent is not None:
        out["style latent"] = f"W+ {list(d.style_latent.shape)} (the reference image's; sample --style-latent)"
    out.update({k: v for k, v in d.meta.items() if k != "file"})
    return out


def _describe_generator(path: Path, ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """``ckpt``: the file in ``generator_files``' normal form."""
    G = generator_from_state(ckpt["g_ema"], ckpt.get("latent_avg"), name=path.stem, where=str(path),
                             conv_clamp=ckpt.get("conv_clamp"))
    c = G.config
    return {"file": str(path), "kind": "StyleGAN2 generator", "resolution": c.resolution,
            "style dim": c.style_dim, "mapping layers": c.n_mlp, "channels": list(c.channels),
            "W vectors": c.num_ws, "domain numbers": G.num_domain_params,
            "latent_avg": "stored" if ckpt.get("latent_avg") is not None else "computed on first use",
            "conv_clamp": c.conv_clamp, "fingerprint": G.fingerprint}


def _describe_paper(path: Path, obj: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"file": str(path), "kind": "HyperDomainNet paper checkpoint"}
    for key in ("model_type", "patch_key", "da_type"):
        if key in obj:
            out[key] = obj[key]
    sd = obj.get("state_dict")
    if isinstance(sd, Mapping):
        out["tensors"] = len(sd)
        out["numbers"] = sum(int(t.numel()) for t in sd.values() if hasattr(t, "numel"))
    sg2 = obj.get("sg2_params", obj.get("sg_2_params"))
    if isinstance(sg2, Mapping):
        out["generator params"] = dict(sg2)
    return out


def _describe_latent(path: Path) -> dict[str, Any]:
    lat = Latent.load(path)
    m = lat.meta
    out: dict[str, Any] = {"file": str(path), "kind": "W+ latent", "shape": list(lat.ws.shape)}
    for key in ("image", "image_digest", "aligned", "generator", "generator_fingerprint", "psnr", "lpips"):
        if m.get(key) is not None:
            out[key] = m[key]
    if isinstance(m.get("inversion"), dict):
        out["steps"] = m["inversion"].get("steps")
    return out


def _describe_hypernet(path: Path) -> dict[str, Any]:
    net = HyperDomainNet.load(path)
    c, m = net.config, net.meta
    out: dict[str, Any] = {"file": str(path), "kind": "HyperDomainNet", "parameters": sum(p.numel() for p in net.parameters()),
                           "domain numbers": c.num_domain_params, "convs": len(c.domain_dims),
                           "blocks (backbone / head)": f"{c.backbone_blocks} / {c.head_blocks}", "width": c.width,
                           "input": f"{c.input_dim}-d, {m.get('input_clip') or m.get('input', '?')}"}
    prompts = m.get("train_prompts")
    if prompts:
        out["training prompts"] = f"{len(prompts)} ({', '.join(prompts[:3])}, ...)"
    for key in ("generator", "generator_fingerprint", "clip_models", "losses", "iterations", "seed", "batch",
                "imported_from"):
        if m.get(key) is not None:
            out[key] = m[key]
    return out


def _describe_translator(path: Path) -> dict[str, Any]:
    from ..image.translators.files import load_translator  # builds the network: segmentation-models-pytorch

    T = load_translator(path)
    c, m = T.config, T.meta
    out: dict[str, Any] = {"file": str(path), "kind": f"translator ({T.method})",
                           "network": f"U-Net, encoder {c.encoder} depth {c.encoder_depth}, decoder "
                                      f"{list(c.decoder_channels)}, {c.size} px"
                                      + (f", {c.noise_channels} noise channels" if c.noise_channels else ""),
                           "parameters": sum(p.numel() for p in T.net.parameters()),
                           "generator": T.generator.get("name"), "generator_fingerprint": T.generator.get("fingerprint"),
                           "domain": T.domain.get("name") or T.domain.get("prompt"), "domain_digest": T.domain.get("digest")}
    for key in ("iterations", "losses", "batch", "lr", "seed", "pairs"):
        if m.get(key) is not None:
            out[key] = m[key]
    return out


def _describe_run_checkpoint(path: Path, kind: str) -> dict[str, Any]:
    meta = read_checkpoint_meta(path, kind)
    cfg = meta.get("config", {})
    command = _RESUME_COMMANDS[kind]
    out: dict[str, Any] = {"file": str(path), "kind": f"{command}{' --image' if kind == 'image' else ''} run checkpoint",
                           "step": f"{meta.get('step')} of {cfg.get('iters')}",
                           "generator": meta.get("generator"), "generator_fingerprint": meta.get("generator_fingerprint")}
    for key in ("image", "target", "source", "domains", "clip", "losses", "batch", "lr", "seed"):
        if key in cfg:
            out[key] = cfg[key]
    out["resume with"] = f"hyperdomain {command} --resume {path.parent}"
    return out
