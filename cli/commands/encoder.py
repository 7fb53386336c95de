"""`hyperdomain train-encoder`: an e4e or ReStyle encoder for a generator that has none, trained on
its own renders (and optionally a folder of photos); one process or many under torchrun."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import UserError, interrupted, user_errors
from ..loading import absolute_path, check_run_folder, resolve_device, resumed_generator
from ..options import (LEARNING_RATE, SEED, FiniteFloat, LibraryDefault, detector_options, device_option,
                       generator_option, log_option, lpips_vgg_option, option_group, progress_option, resume_option)

KINDS = ("e4e", "restyle-psp", "restyle-e4e")  # image.encoders.KINDS, repeated so that --help loads no torch


def encoder_train_config():
    from hyperdomain import EncoderTrainConfig

    return EncoderTrainConfig


def _sizes(text: str | None, what: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"{what} {text!r}: expected 4 comma-separated integers, e.g. 64,128,256,512") from None


# where the run's models are and how it runs, not what it is: what a resume may still be told
where = option_group(generator_option, progress_option, device_option)

EXAMPLES = """
\b
Examples:
  hyperdomain train-encoder -g afhqdog --kind e4e --out runs/enc_dog
  hyperdomain train-encoder -g ffhq --kind restyle-e4e --photos my_faces/ --iters 50000
  torchrun --nproc_per_node 4 -m cli.main train-encoder -g afhqcat --batch 32   # DDP over 4 GPUs
  hyperdomain train-encoder --resume runs/enc_dog                                # after Ctrl-C
"""

C = encoder_train_config


@click.command(name="train-encoder", epilog=EXAMPLES)
@click.option("--kind", type=click.Choice(KINDS), default="e4e", show_default=True,
              help="e4e: one pass; restyle-*: ReStyle's iterative refinement.")
@click.option("--photos", type=click.Path(path_type=Path),
              help="A folder of real photos to train on too (reconstruction losses only).")
@click.option("--photo-fraction", cls=LibraryDefault, owner=C, type=FiniteFloat(0, 1, min_open=True),
              help="With --photos: the share of steps that train on them.")
@click.option("--iters", cls=LibraryDefault, owner=C, type=click.IntRange(1), help="Training steps.")
@click.option("--batch", cls=LibraryDefault, owner=C, type=click.IntRange(2), help="Global batch (all processes).")
@click.option("--lr", cls=LibraryDefault, owner=C, type=LEARNING_RATE, help="Adam learning rate.")
@click.option("--loss", "losses", multiple=True, metavar="NAME=WEIGHT",
              help="Loss weights, repeatable: latent (MSE to the render's known W+), l2 and lpips (of the "
                   "reconstruction), delta_norm (e4e's delta regulariser) [default: latent=1 l2=1 lpips=0.8 "
                   "delta_norm=0.0002].")
@click.option("--mixing", cls=LibraryDefault, owner=C, type=FiniteFloat(0, 1),
              help="Style-mixing probability of each training render.")
@click.option("--input-size", type=click.IntRange(16, 256),
              help="The side the encoder reads [default: the generator's, at most 256].")
@click.option("--n-iters", type=click.IntRange(1), help="ReStyle's passes per image [default: 5].")
@click.option("--widths", metavar="W1,W2,W3,W4", help="Backbone stage widths [default: IR-SE50's 64,128,256,512].")
@click.option("--units", metavar="N1,N2,N3,N4", help="Residual units per stage [default: IR-SE50's 3,4,14,3].")
@click.option("--progressive-every", cls=LibraryDefault, owner=C, type=click.IntRange(0),
              help="e4e's progressive training: one more layer gets its own code every N steps (0: all at once).")
@click.option("--align/--no-align", default=None,
              help="Align each photo as FFHQ's faces [default: on for face generators].")
@detector_options
@lpips_vgg_option
@click.option("--seed", cls=LibraryDefault, owner=C, type=SEED)
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/encoder"),
              show_default=True)
@click.option("--sample-every", cls=LibraryDefault, owner=C, type=click.IntRange(0))
@click.option("--checkpoint-every", cls=LibraryDefault, owner=C, type=click.IntRange(0))
@resume_option
@log_option
@where
@click.pass_context
@user_errors
def train_encoder(ctx, kind, photos, photo_fraction, iters, batch, lr, losses, mixing, input_size, n_iters, widths,
                  units, progressive_every, align, detector, detector_weights, lpips_vgg, seed, out, sample_every,
                  checkpoint_every, resume, log, generator, progress, device):
    """Train a photo encoder (e4e or ReStyle) for a generator, on its own renders."""
    import hyperdomain as hd
    from hyperdomain import distributed
    from hyperdomain.training.dashboards import parse_dashboards, require
    from hyperdomain.training.encoder import ENCODER_FILE, EncoderLosses, photo_files
    from hyperdomain.training.run_dir import refuse_existing_run

    dashboards = parse_dashboards(log)
    saved = hd.read_encoder_train_config(resume) if resume is not None else None
    require(saved.dashboards if saved is not None else dashboards)  # before anything loads
    if device != "auto":
        resolve_device(device)
    options, config = {}, None
    if saved is not None:
        generator = resumed_generator(ctx, saved, generator, ("resume", "iters", "detector", "detector_weights",
                                                              *where.names))
        out = resume
        if ctx.get_parameter_source("iters") is not click.core.ParameterSource.DEFAULT:
            options["iters"] = iters
    else:
        check_run_folder(out)
        refuse_existing_run(out, "encoder")
        if photos is not None:
            photo_files(photos)  # an empty or missing folder, named before anything loads
        config = hd.EncoderTrainConfig(
            kind=kind, photos=absolute_path(photos) if photos is not None else None, photo_fraction=photo_fraction,
            iters=iters, batch=batch, lr=lr, losses=EncoderLosses.parse(losses), mixing=mixing,
            input_size=input_size, n_iters=n_iters, widths=_sizes(widths, "--widths") or C().widths,
            units=_sizes(units, "--units") or C().units, progressive_every=progressive_every, align=align,
            lpips_backbone=absolute_path(lpips_vgg) if lpips_vgg is not None else "imagenet", seed=seed,
            sample_every=sample_every, checkpoint_every=checkpoint_every, generator=absolute_path(generator),
            dashboards=dashboards)
    run_config = saved or config
    dist = distributed.setup(device)
    try:
        G = hd.load_generator(generator, device=dist.device)
        det = None
        if run_config.photos is not None:
            from hyperdomain.image.alignment import aligns

            if aligns(G, run_config.align):
                from hyperdomain.image.face_detectors import detector as face_detector

                det = face_detector(detector, detector_weights)
        try:
            enc = hd.train_encoder(G, config=config, out_dir=out if resume is None else None, resume=resume,
                                   dist=dist, detector=det, progress=progress, **options)
        except KeyboardInterrupt as stop:
            interrupted(ctx, out, "train-encoder", stop, say=dist.is_main)
        if dist.is_main:
            click.echo(f"wrote {out / ENCODER_FILE} ({enc.config.kind}, {enc.meta['iterations']} steps) and "
                       f"{out / 'samples.png'}")
    finally:
        distributed.teardown(dist)
