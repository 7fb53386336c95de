"""What commands load from their arguments: the device, the generator's domains (files or a
hypernetwork's prompts), latents, photos and the tools that invert them. One home each."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import click

from .errors import UserError
from .outputs import check_name_length


def resolve_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device: expected auto, cpu or cuda:N, got {device!r}") from None
    if dev.type not in ("cpu", "cuda") or (dev.type == "cpu" and dev.index not in (None, 0)):
        raise UserError(f"--device: expected auto, cpu or cuda:N, got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) present")
    return dev


def absolute_path(name_or_path) -> str:
    """A file argument as an absolute path (runs are resumed from other folders); names stay names."""
    p = Path(str(name_or_path))
    return str(p.resolve()) if str(name_or_path) and p.exists() else str(name_or_path)


def absolute_spec(spec: str) -> str:
    """``--clip NAME[:TAG][=FILE]`` with FILE (and a config .json NAME) made absolute."""
    from hyperdomain.guidance.clip import absolute_spec as absolute

    return absolute(spec)


def given_options(ctx: click.Context, names: Iterable[str]) -> list[str]:
    """Those of ``names`` the user set (not left at their defaults), as ``--option`` spellings."""
    return ["--" + n.replace("_", "-") for n in names
            if ctx.get_parameter_source(n) is not click.core.ParameterSource.DEFAULT]


def resumed_generator(ctx: click.Context, config, generator: str, keeps: Iterable[str]) -> str:
    """--resume keeps a run's settings: refuse options other than ``keeps``; the run's generator
    unless one is given."""
    given = given_options(ctx, [p for p in ctx.params if p not in set(keeps)])
    if given:
        raise UserError(f"--resume keeps the run's settings; drop {', '.join(given)}")
    if ctx.get_parameter_source("generator") is click.core.ParameterSource.DEFAULT and config.generator:
        return config.generator
    return generator


def check_domain_source(domains: Sequence[Path], hyper: Path | None, prompts: Sequence[str], *,
                        prompt_list: str | None = None, lists: bool = False, required: bool = False) -> None:
    """``--prompt`` (and ``--prompts LIST``, for commands that take ``lists``) needs ``--hyper`` and
    the other way round; ``required``: at least one domain."""
    if (prompts or prompt_list) and hyper is None:
        given = "--prompt" if prompts else "--prompts"
        raise UserError(f"{given} needs --hyper FILE (a hypernetwork that maps prompts to domains)")
    if hyper is not None and not (prompts or prompt_list):
        raise UserError("--hyper needs at least one --prompt" + (" or --prompts LIST" if lists else ""))
    if required and not domains and hyper is None:
        raise UserError("give at least one --domain (or --hyper with --prompt)")


def load_domains(G, domains: Sequence[Path], hyper: Path | None = None, prompts: Sequence[str] = (),
                 hyper_clip: str | None = None, no_check: bool = False) -> list:
    """The domain files, then the hypernetwork's domain for each prompt, all checked against ``G``."""
    import hyperdomain as hd

    loaded = [hd.Domain.load(p, generator=G, check=not no_check) for p in domains]
    if hyper is not None and prompts:
        loaded += load_hyper(hyper, G, no_check, hyper_clip).domains(list(prompts))
    return loaded


def load_hyper(path: Path, G, no_check: bool, clip_spec: str | None):
    """A hypernetwork file, checked against the generator, with its prompt encoder chosen."""
    import hyperdomain as hd

    net = hd.HyperDomainNet.load(path, generator=G, check=not no_check).to(G.device)
    if clip_spec:
        net.text_encoder(absolute_spec(clip_spec))
    return net


def read_style_latent(path: Path, G, no_check: bool, mix_from: int):
    """W+ ``[num_ws, w_dim]`` from a latent file or from a one-shot domain file that carries one."""
    import hyperdomain as hd
    from hyperdomain.files.safetensors_files import DOMAIN, read_safetensors

    if read_safetensors(path, "latent or domain file", load=False)[0].get("format") == DOMAIN:
        d = hd.Domain.load(path, generator=G, check=not no_check)
        if d.style_latent is None:
            raise UserError(f"--style-latent {path}: this domain carries no latent (only one-shot domains do); "
                            f"pass a latent file from hyperdomain invert")
        first = int(d.meta.get("style_latent_from", 0))
        if mix_from < first:
            raise UserError(f"--mix-from {mix_from}: {path} holds the reference's layers from {first} on only")
        return d.style_latent
    return hd.Latent.load(path, generator=G, check=not no_check).ws


def check_run_folder(out: Path) -> None:
    """A new run folder's name fits the file system (as its checkpoint's, written in it)."""
    from hyperdomain.files.run_checkpoints import CHECKPOINT

    check_name_length("--out", out / CHECKPOINT)


def check_photos(photos, G=None) -> list:
    """Photos read once, before the models load (a bad one is named in seconds, not after them): the
    files as :class:`~hyperdomain.image.photos.Photo` s. With ``G``, those Photos checked for the size
    the generator needs (:func:`~hyperdomain.image.photos.min_photo_side`), before LPIPS, the
    detector or a run folder."""
    from hyperdomain.image.photos import check_side, min_photo_side, read_photos

    if G is None:
        return read_photos(photos)
    for photo in photos:
        check_side(photo.image, photo.name, min_photo_side(G.resolution))
    return list(photos)


def photo_paths(paths: Sequence[Path]) -> list[Path]:
    """The photos named, a folder standing for every image in it (sorted by name)."""
    from hyperdomain.files.kinds import IMAGE_SUFFIXES

    out: list[Path] = []
    for p in paths:
        if Path(p).is_dir():
            found = sorted(q for q in Path(p).iterdir() if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
            if not found:
                raise UserError(f"{p}: a folder with no images ({', '.join(IMAGE_SUFFIXES)})")
            out += found
        else:
            out.append(Path(p))
    return out


def photo_encoder(G, encoder: str, restyle_steps, refine: int, steps: int, no_check: bool = False,
                  what: str = "invert"):
    """The encoder ``--encoder`` names for ``G`` (None: II2S), checked with the options that go with
    it, and the line saying which method that is (for stderr once it ran: an error before stays the
    only line)."""
    from hyperdomain.image.encoders.choice import AUTO, NONE, encoder_for

    enc = encoder_for(G, absolute_path(encoder) if encoder not in (AUTO, NONE) else encoder, check=not no_check)
    if enc is None:
        if restyle_steps is not None or (refine and encoder == NONE):
            given = "--restyle-steps" if restyle_steps is not None else "--refine"
            raise UserError(f"{given} needs an encoder (--encoder e4e, restyle-e4e, restyle-psp or a file); ii2s "
                            f"runs --steps")
        why = "" if encoder == NONE else (f" (no encoder for generator {G.name!r} downloaded yet; --encoder e4e "
                                          f"fetches one where known)")
        return None, f"{what}: II2S, {steps} steps{why}"
    if restyle_steps is not None and not enc.config.iterative:
        raise UserError(f"--restyle-steps is for ReStyle encoders; --encoder {encoder} is {enc.config.kind}, one pass")
    ctx = click.get_current_context(silent=True)
    if not refine and ctx is not None and "steps" in ctx.params and given_options(ctx, ["steps"]):
        raise UserError(f"--steps sets II2S's steps, which --encoder {encoder} ({enc.config.kind}) does not run; add "
                        f"--refine N to refine its latent with II2S, or give --encoder ii2s")
    passes = (restyle_steps or enc.config.n_iters) if enc.config.iterative else 1
    return enc, (f"{what}: {enc.config.kind} encoder, {passes} pass{'es' * (passes > 1)}"
                 + (f", then {refine} II2S steps" if refine else "")
                 + f" ({enc.meta.get('file') or enc.meta.get('source')})")


def inversion_tools(G, align, detector, detector_weights, lpips_vgg, steps, lr, pca_samples):
    """The detector (when aligning), LPIPS and inversion settings the photo options ask for."""
    import hyperdomain as hd
    from hyperdomain.image.alignment import aligns
    from hyperdomain.image.perceptual import load_lpips

    aligning = aligns(G, align)
    det = None
    if aligning:
        from hyperdomain.image.face_detectors import detector as face_detector

        det = face_detector(detector, detector_weights)
    lpips = load_lpips(G.device, absolute_path(lpips_vgg) if lpips_vgg is not None else "imagenet")
    return aligning, det, lpips, hd.InversionConfig(steps=steps, lr=lr, pca_samples=pca_samples)
