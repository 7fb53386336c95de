"""`hyperdomain adapt`: one domain vector, from a prompt (text), a reference image (one-shot), or a
saved run (resume). The command parses and checks; one function per mode does the run."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import UserError, interrupted, user_errors
from ..loading import (absolute_path, absolute_spec, check_photos, check_run_folder, given_options, photo_encoder,
                       resolve_device, resumed_generator)
from ..options import (LEARNING_RATE, SEED, FiniteFloat, LibraryChoice, LibraryDefault, LossOption, adapt_config,
                       detector_options, device_option, encoder_options, lpips_vgg_option,
                       generator_option, image_config, inversion_config, log_option, option_group, progress_option,
                       resume_option, template_sets)

EXAMPLES = """
\b
Examples:
  hyperdomain adapt --target "3D render in the style of Pixar"
  hyperdomain adapt --target "Anime painting" --generator ffhq --loss direction=1 --loss indomain=0.5
  hyperdomain adapt --target "Sketch" --clip ViT-B-32=ViT-B-32.safetensors --clip ViT-B-16=ViT-B-16.safetensors
  hyperdomain adapt --image mermaid.png                     # one-shot, from a reference image
  hyperdomain adapt --image mermaid.png --target "Mermaid"  # an image and a prompt together
  hyperdomain adapt --image mermaid.png --encoder e4e       # the reference's latent from an encoder
  hyperdomain adapt --resume runs/anime_painting            # after Ctrl-C, or --iters 600 to extend
"""

IMAGE = (image_config, "with --image")  # the one-shot trainer's defaults, shown beside the text trainer's

# where the run's models are and how it runs, not what it is: what a resume may still be told
where = option_group(
    generator_option,
    click.option("--clip", "clip", cls=LibraryDefault, owner=adapt_config, fallback=True, fallback_help="",
                 multiple=True, metavar="NAME[:TAG][=FILE]",
                 help="CLIP model(s), repeatable (TAG: open_clip's pretrained tag, openai by default). FILE: local "
                      "weights for offline use; NAME may be an open_clip model config .json."),
    lpips_vgg_option,
    progress_option,
    device_option,
)

one_shot = option_group(
    click.option("--align/--no-align", cls=LibraryDefault, owner=image_config,
                 help="With --image: align the reference as a face (FFHQ's crop) before inverting it."),
    click.option("--mix-from", cls=LibraryDefault, owner=image_config, type=click.IntRange(1),
                 help="With --image: the sample grid's style-mixed row takes W+ layers from here on from the "
                      "reference."),
    click.option("--inversion-steps", cls=LibraryDefault, owner=inversion_config, field="steps",
                 type=click.IntRange(1), help="With --image: steps of the reference's inversion (cached per image "
                                              "and settings)."),
    detector_options,
    encoder_options,
)

settings = option_group(
    click.option("--batch", cls=LibraryDefault, owner=adapt_config, fallback=True, also=IMAGE,
                 type=click.IntRange(1, 4096)),
    click.option("--lr", cls=LibraryDefault, owner=adapt_config, fallback=True, also=IMAGE,
                 type=LEARNING_RATE, help="Adam learning rate."),
    click.option("--loss", "losses", cls=LossOption, run="adapt", also_run=("image", "with --image"),
                 owner=adapt_config, fallback=True, also=IMAGE),
    click.option("--mixing", cls=LibraryDefault, owner=adapt_config, fallback=True, type=FiniteFloat(0, 1),
                 help="Style-mixing probability of a batch."),
    click.option("--templates", cls=LibraryDefault, owner=adapt_config, type=LibraryChoice(template_sets),
                 help="Prompt templates the text embeddings average over."),
    click.option("--seed", cls=LibraryDefault, owner=adapt_config, type=SEED),
    click.option("--sample-every", cls=LibraryDefault, owner=adapt_config, fallback=True, fallback_help="",
                 also=IMAGE, type=click.IntRange(0), help="Write a sample grid every N steps (0: only at the end)."),
    click.option("--checkpoint-every", cls=LibraryDefault, owner=adapt_config, fallback=True, fallback_help="",
                 also=IMAGE, type=click.IntRange(0),
                 help="Save a resumable checkpoint every N steps (0: only at the end and on Ctrl-C)."),
    log_option,
)


@click.command(epilog=EXAMPLES)
@click.option("--target", "-t", help="The target domain, in words (e.g. \"3D render in the style of Pixar\").")
@click.option("--image", "-i", type=click.Path(dir_okay=False, path_type=Path),
              help="A reference image: one-shot adaptation to its style (the paper's im2im); with --target too, "
                   "both steer the run.")
@click.option("--source", "-s", help="The source domain (default: the generator's, e.g. \"Photo\").")
@click.option("--iters", cls=LibraryDefault, owner=adapt_config, fallback=True, also=IMAGE, type=click.IntRange(1),
              help="Training steps (with --resume: extends the run).")
@settings
@one_shot
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path),
              help="Run folder [default: runs/<target or image name>].")
@resume_option
@where
@click.pass_context
@user_errors
def adapt(ctx, target, image, source, iters, out, resume, **options):
    """Adapt a generator to a domain described in words, or shown by one reference image: trains one
    domain vector against CLIP."""
    if resume is not None:
        domain = _resume(ctx, resume, iters, **{k: options[k] for k in where.names})
        out = resume
    else:
        if image is None and not target:
            raise UserError("--target or --image is required (or --resume DIR)")
        if image is None and given_options(ctx, one_shot.names):
            raise UserError(f"{given_options(ctx, one_shot.names)[0]} is for one-shot runs (--image)")
        from hyperdomain.training.adapt import slug

        out = out or Path("runs") / slug(image.stem if image is not None else target)
        domain = _new_run(ctx, target, image, source, iters, out, *({k: options[k] for k in group.names}
                                                                    for group in (where, settings, one_shot)))
    from hyperdomain.training.adapt import DOMAIN_FILE

    what = f"prompt {domain.meta['prompt']!r}" if domain.meta.get("prompt") else ""
    if domain.meta.get("reference_image"):
        what = f"reference {domain.meta['reference_image']}" + (f", {what}" if what else "")
    click.echo(f"wrote {out / DOMAIN_FILE} ({len(domain)} numbers, {domain.meta['iterations']} steps, {what}) "
               f"and {out / 'samples.png'}")


def _new_run(ctx, target, image, source, iters, out, places: dict, chosen: dict, reference: dict):
    """A new text or one-shot run in ``out`` (checked, with the reference, before anything loads):
    ``places``, ``chosen`` and ``reference`` are the ``where``, ``settings`` and ``one_shot`` options."""
    import hyperdomain as hd
    from hyperdomain.training.dashboards import parse_dashboards, require
    from hyperdomain.training.run_dir import refuse_existing_run

    dashboards = parse_dashboards(chosen["log"])
    check_run_folder(out)
    refuse_existing_run(out, "image" if image is not None else "adapt")
    photo = check_photos([image] if image is not None else [])
    require(dashboards)
    G = hd.load_generator(places["generator"], device=resolve_device(places["device"]))
    check_photos(photo, G)
    losses = chosen["losses"]
    run = dict(chosen, log=None, losses=hd.LossWeights.parse(losses) if losses else None, iters=iters,
               clip=[absolute_spec(c) for c in places["clip"]] or None, out_dir=out, progress=places["progress"],
               generator=absolute_path(places["generator"]), dashboards=dashboards)
    run = {k: v for k, v in run.items() if v is not None}  # unset: the generator's recipe, else the config's
    try:
        if image is None:
            return hd.adapt(G, target, source, **run)
        det = None
        if reference["align"]:
            from hyperdomain.image.face_detectors import detector as face_detector

            det = face_detector(reference["detector"], reference["detector_weights"])
        lpips_vgg = places["lpips_vgg"]
        enc, method = photo_encoder(G, reference["encoder"], reference["restyle_steps"], reference["refine"],
                                    reference["inversion_steps"], what="adapt --image: the reference")
        domain = hd.adapt_image(G, image, target, detector=det, source=source, align=reference["align"],
                                mix_from=reference["mix_from"],
                                inversion=hd.InversionConfig(steps=reference["inversion_steps"]),
                                encoder=absolute_path(enc.meta["file"]) if enc is not None else None,
                                restyle_steps=reference["restyle_steps"], refine=reference["refine"],
                                lpips_backbone=absolute_path(lpips_vgg) if lpips_vgg else None, **run)
        click.echo(method, err=True)
        return domain
    except KeyboardInterrupt as stop:
        interrupted(ctx, out, "adapt", stop)


def _resume(ctx, run_dir: Path, iters, *, generator, clip, lpips_vgg, progress, device):
    """Continue the text or one-shot run saved in ``run_dir`` with its own settings (``iters`` may
    extend it; the models' places may be given again, e.g. when the files moved)."""
    import hyperdomain as hd
    from hyperdomain.files.run_checkpoints import run_kind
    from hyperdomain.training.dashboards import require
    from hyperdomain.training.one_shot import read_image_adapt_config

    kind = run_kind(run_dir)
    config = hd.read_adapt_config(run_dir) if kind == "adapt" else read_image_adapt_config(run_dir)
    generator = resumed_generator(ctx, config, generator, keeps=("resume", "iters", *where.names))
    require(config.dashboards)  # before anything loads
    dev = resolve_device(device)
    G = hd.load_generator(generator, device=dev)
    clips = [absolute_spec(c) for c in clip] or None
    try:
        if kind == "adapt":
            return hd.adapt(G, clip=clips, iters=iters, progress=progress, resume=run_dir)
        from hyperdomain.image.perceptual import load_lpips

        lpips = None if lpips_vgg is None else load_lpips(dev, lpips_vgg)  # e.g. the run's file moved
        return hd.adapt_image(G, resume=run_dir, clip=clips, iters=iters, lpips=lpips, progress=progress)
    except KeyboardInterrupt as stop:
        interrupted(ctx, run_dir, "adapt", stop)
