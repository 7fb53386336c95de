"""`hyperdomain translator train` (a network that maps a photo into a domain in one pass) and
`hyperdomain translate` (photos through a trained translator)."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import interrupted, user_errors
from ..loading import absolute_path, check_run_folder, resolve_device, resumed_generator
from ..options import (LEARNING_RATE, SEED, LibraryDefault, LossOption, detector_options, device_option, log_option,
                       lpips_vgg_option, option_group, progress_option, resume_option)
from ..outputs import check_outputs, overwrite_option, unique_stems


def translator_config():
    from hyperdomain.training.translator import TranslatorTrainConfig

    return TranslatorTrainConfig


where = option_group(
    click.option("--generator", "-g", help="The generator that renders the pairs (a manifest name or a checkpoint); "
                                           "with --pairs, optional: it is checked against the dataset's."),
    progress_option,
    device_option,
)

EXAMPLES = """
\b
Examples:
  hyperdomain translator train -g ffhq --domain pixar.safetensors --size 256 --out runs/pixar-translator
  hyperdomain translator train --pairs data/pixar --domain pixar --size 128 --iters 5000
  torchrun --nproc_per_node 4 -m cli.main translator train -g ffhq --domain pixar.safetensors --batch 32
  hyperdomain translator train --resume runs/pixar-translator --iters 4000
"""


@click.group()
def translator():
    """Translators: a network that takes a photo into a domain in one pass (no inversion)."""


@translator.command(name="train", epilog=EXAMPLES)
@click.option("--method", type=click.Choice(["paired", "not", "enot"]), default="paired", show_default=True,
              help="paired: (source, domain) pairs of the generator; not/enot: optimal transport from --photos.")
@click.option("--pairs", type=click.Path(file_okay=False, path_type=Path),
              help="A hyperdomain dataset folder to read the pairs from [default: rendered on the fly by -g].")
@click.option("--domain", help="The domain: a domain file (pairs rendered by -g), or a domain's name in --pairs.")
@click.option("--size", cls=LibraryDefault, owner=translator_config, type=click.IntRange(8, 4096),
              help="The side the translator works at (a multiple of 2^encoder depth).")
@click.option("--encoder", cls=LibraryDefault, owner=translator_config,
              help="The U-Net's encoder (segmentation-models-pytorch: resnet18, resnet34, tu-resnet10t, ...).")
@click.option("--iters", cls=LibraryDefault, owner=translator_config, type=click.IntRange(1), help="Training steps.")
@click.option("--batch", cls=LibraryDefault, owner=translator_config, type=click.IntRange(1),
              help="Global batch (all processes).")
@click.option("--lr", cls=LibraryDefault, owner=translator_config, type=LEARNING_RATE)
@click.option("--loss", "losses", cls=LossOption, run="translator", owner=translator_config, fallback=True,
              fallback_help="")
@lpips_vgg_option
@click.option("--seed", cls=LibraryDefault, owner=translator_config, type=SEED)
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/translator"),
              show_default=True)
@click.option("--sample-every", cls=LibraryDefault, owner=translator_config, type=click.IntRange(0))
@click.option("--checkpoint-every", cls=LibraryDefault, owner=translator_config, type=click.IntRange(0))
@resume_option
@log_option
@where
@click.pass_context
@user_errors
def train(ctx, method, pairs, domain, size, encoder, iters, batch, lr, losses, lpips_vgg, seed, out, sample_every,
          checkpoint_every, resume, log, generator, progress, device):
    """Train a translator into a domain (a U-Net; L1 + LPIPS to the domain's images for --method paired)."""
    import hyperdomain as hd
    from hyperdomain import distributed
    from hyperdomain.training.dashboards import parse_dashboards, require
    from hyperdomain.training.translator import TRANSLATOR_FILE, read_translator_config

    dashboards = parse_dashboards(log)
    require(read_translator_config(resume).dashboards if resume is not None else dashboards)
    if device != "auto":
        resolve_device(device)
    dist = distributed.setup(device)
    try:
        options, the_domain = {}, None
        if resume is not None:
            config = read_translator_config(resume)
            if config.pairs is None or generator is not None:
                generator = resumed_generator(ctx, config, generator or "ffhq", ("resume", "iters", *where.names))
            out = resume
            if ctx.get_parameter_source("iters") is not click.core.ParameterSource.DEFAULT:
                options["iters"] = iters
        else:
            check_run_folder(out)
            from hyperdomain.training.run_dir import refuse_existing_run

            refuse_existing_run(out, "translator")
            if pairs is None and generator is None:
                raise click.UsageError("give -g GENERATOR (pairs rendered on the fly) or --pairs DATASET_DIR")
            if pairs is None and not domain:
                raise click.UsageError("--domain: give the domain file the pairs are rendered in")
            given = {"losses": hd.LossWeights.parse(losses)} if losses else {}
            if lpips_vgg is not None:
                given["lpips_backbone"] = absolute_path(lpips_vgg) if lpips_vgg != "random" else "random"
            options = dict(size=size, encoder=encoder, iters=iters, batch=batch, lr=lr, seed=seed,
                           sample_every=sample_every, checkpoint_every=checkpoint_every, dashboards=dashboards,
                           **given)
            if generator is not None:
                options["generator"] = absolute_path(generator)
        G = hd.load_generator(generator, device=dist.device) if generator is not None else None
        if resume is None:
            the_domain = domain if pairs is not None else hd.Domain.load(domain, generator=G)
        try:
            if resume is None:
                options.update(method=method, pairs=pairs)
            T = hd.train_translator(G, the_domain, out_dir=out, resume=resume, dist=dist, progress=progress,
                                    device=dist.device, **options)
        except KeyboardInterrupt as stop:
            interrupted(ctx, out, "translator train", stop, say=dist.is_main)
        if dist.is_main:
            click.echo(f"wrote {out / TRANSLATOR_FILE} ({T.meta['iterations']} steps, {T.method}, "
                       f"{T.config.size} px) and {out / 'samples.png'}")
    finally:
        distributed.teardown(dist)


@click.command()
@click.argument("photos", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--translator", "-t", "translator_file", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="A translator file (translator.safetensors of hyperdomain translator train).")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the results (NAME.png, one per photo).")
@click.option("--generator", "-g", help="Check that the translator was trained on this generator's images.")
@click.option("--no-check", is_flag=True, help="Use a translator trained on another generator's images.")
@click.option("--align/--no-align", default=None,
              help="Align each photo as FFHQ's faces [default: on for translators of face generators].")
@detector_options
@click.option("--batch", type=click.IntRange(1, 4096), default=8, show_default=True, help="Photos per pass.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="The noise of a stochastic (NOT) translator.")
@progress_option
@overwrite_option
@device_option
@user_errors
def translate(photos, translator_file, out, generator, no_check, align, detector, detector_weights, batch, seed,
              progress, overwrite, device):
    """Take photos into a domain with a trained translator (one network pass each).

    \b
    Example:
      hyperdomain translate me.jpg friends/*.png --translator runs/pixar-translator/translator.safetensors --out pixar/
    """
    import hyperdomain as hd
    from hyperdomain.files.kinds import IMAGE

    names = unique_stems(photos)
    outputs = [out / f"{n}.png" for n in names]
    check_outputs([("--out", p, IMAGE) for p in outputs], [*photos, translator_file, detector_weights], overwrite)
    from hyperdomain.image.photos import read_photos

    read = read_photos(photos)
    G = hd.load_generator(generator, device="cpu") if generator is not None else None
    T = hd.load_translator(translator_file, generator=G, check=not no_check).to(resolve_device(device))

    from hyperdomain.image.translate import translator_alignment

    det = None
    if align or (align is None and translator_alignment(T) is not None):
        from hyperdomain.image.face_detectors import detector as face_detector

        det = face_detector(detector, detector_weights)
    images = hd.translate(T, read, align=align, detector=det, batch=batch, seed=seed, progress=progress)
    for photo, path, image in zip(photos, outputs, images):
        hd.save_grid(image[None], path, padding=0)
        click.echo(f"{photo} -> {path}")
