"""`hyperdomain` command group. Thin: every command parses, calls the library, reports."""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import click

from .outputs import (CommandError, check_name_length, check_outputs, overwrite_option, spec_file, unique_names,
                      unique_stems)
from .options import (LEARNING_RATE, SEED, FiniteFloat, LibraryChoice, LibraryDefault, adapt_config, evaluate_function,
                      hyper_config, image_config, inversion_config, noise_modes, sample_method, template_sets)

EXAMPLES_SAMPLE = """
\b
Examples:
  hyperdomain sample --generator ffhq -n 16 --out grid.png
  hyperdomain sample --generator ffhq --domain pixar.safetensors --domain anime.safetensors \\
      --with-source -n 8 --out rows.png --separate frames/
"""


class UserError(CommandError):
    """A bad file or argument: one line on stderr, exit code 2."""

    exit_code = 2


class StorageFault(CommandError):
    """The storage failed a write (a full disk, an I/O error): one line on stderr, exit code 1 (the
    environment, not the input)."""

    exit_code = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM (what schedulers, ``timeout``, Docker and Kubernetes send before they kill), raised
    where the command is, as Ctrl-C raises KeyboardInterrupt: the same clean-up runs (a temporary
    file is removed, ffmpeg stopped)."""

    signum = int(signal.SIGTERM)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises :class:`Terminated` while a command runs (in the main thread; a trainer's own
    handler, which saves the run first, takes over inside it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def user_errors(fn):
    """Turn the library's errors into one-line CLI errors: exit 2 for bad input, 1 for a storage
    fault (StorageError, or an OSError the library did not name: its file and reason); Ctrl-C or
    SIGTERM: one line, exit 130 or 143 (128 + the signal, as shells report it)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from hyperdomain.errors import HyperdomainError, StorageError

        try:
            with sigterm_as_interrupt():
                return fn(*args, **kwargs)
        except StorageError as e:
            raise StorageFault(str(e)) from None
        except HyperdomainError as e:
            raise UserError(str(e)) from None
        except OSError as e:
            raise StorageFault(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)) from None
        except KeyboardInterrupt as stop:
            signum = int(getattr(stop, "signum", signal.SIGINT))
            click.echo("terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted", err=True)
            sys.exit(128 + signum)
    return wrapper


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


def resumed_generator(ctx, config, generator: str) -> str:
    """--resume keeps a run's settings: refuse other options; the run's generator unless one is given."""
    given = [p for p in ctx.params if p not in _RESUME_KEEPS
             and ctx.get_parameter_source(p) is not click.core.ParameterSource.DEFAULT]
    if given:
        raise UserError(f"--resume keeps the run's settings; drop {', '.join('--' + p.replace('_', '-') for p in given)}")
    if ctx.get_parameter_source("generator") is click.core.ParameterSource.DEFAULT and config.generator:
        return config.generator
    return generator


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


def interrupted(ctx, out: Path, command: str, stop: KeyboardInterrupt, say: bool = True) -> None:
    """Ctrl-C or SIGTERM during training: say where the run is saved (if it is) and exit 130 or 143
    (128 + the signal, as shells report it). A save that failed (a full disk) is said in the same
    line, with the previous checkpoint, which it left as it was."""
    from hyperdomain.files.run_checkpoints import CHECKPOINT

    signum = getattr(stop, "signum", signal.SIGINT)
    if say:
        what = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
        failed = getattr(stop, "save_error", None)
        if failed:
            what += f", but saving failed ({failed})"
        if (out / CHECKPOINT).is_file():
            saved = "its last checkpoint is in" if failed else "the run is saved in"
            click.echo(f"{what}; {saved} {out}. Continue with: hyperdomain {command} --resume {out}", err=True)
        else:
            click.echo(f"{what}{'' if failed else ' before the first checkpoint'}; nothing was saved", err=True)
    ctx.exit(128 + int(signum))


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


class OneLineErrors(click.Group):
    """Usage errors (a bad option value, an unknown option or command) as one line, like every other
    error, with where to look; click's default adds the usage text and a hint over three more lines."""

    def parse_args(self, ctx, args):
        return self._one_line(ctx, super().parse_args, ctx, args)

    def invoke(self, ctx):
        return self._one_line(ctx, super().invoke, ctx)

    @staticmethod
    def _one_line(ctx, fn, *args):
        try:
            return fn(*args)
        except _NO_ARGS_IS_HELP:  # a bare `hyperdomain`: the help, as click shows it
            raise
        except click.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else ctx.command_path
            raise UserError(f"{e.format_message()} (see {where} --help)") from None


device_option = click.option("--device", default="auto", show_default=True,
                             help="auto, cpu, cuda or cuda:N.")
generator_option = click.option("--generator", "-g", default="ffhq", show_default=True,
                                help="Manifest name (see `hyperdomain download --list`) or checkpoint path.")


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="hyperdomain")
def main(verbose: int) -> None:
    """hyperdomain: adapt a frozen StyleGAN2 to new domains with a ~6k-number domain vector."""
    # Large CPU tensors on transparent huge pages: the generator's passes run about 25% faster on
    # CPU (benchmarks/README.md), on GPUs it changes nothing. torch reads the variable once, at its
    # first allocation, and no command has imported torch yet (they import it lazily); a value
    # already set wins.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@main.command(epilog=EXAMPLES_SAMPLE)
@generator_option
@click.option("--domain", "-d", "domains", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Domain file (.safetensors); repeat for one grid row per domain.")
@click.option("--with-source", is_flag=True, help="Add the source generator as the first row.")
@click.option("-n", "--num", "n", type=click.IntRange(1, 10_000), default=16, show_default=True,
              help="Images per domain.")
@click.option("--truncation", cls=LibraryDefault, owner=sample_method, type=FiniteFloat(0.0, 2.0))
@click.option("--seed", cls=LibraryDefault, owner=sample_method, type=SEED)
@click.option("--noise-mode", cls=LibraryDefault, owner=sample_method, type=LibraryChoice(noise_modes))
@click.option("--batch-size", cls=LibraryDefault, owner=sample_method, type=click.IntRange(1, 1024))
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), default=Path("grid.png"),
              show_default=True, help="Grid image to write (.png, .jpg, .webp).")
@click.option("--separate", type=click.Path(file_okay=False, path_type=Path),
              help="Also write every image as its own PNG into this folder.")
@click.option("--hyper", type=click.Path(dir_okay=False, path_type=Path),
              help="A hypernetwork file; with --prompt, one row per prompt.")
@click.option("--prompt", "-p", "prompts", multiple=True, help="A domain in words for --hyper; repeatable.")
@click.option("--hyper-clip", metavar="SPEC",
              help="The hypernetwork's prompt encoder, e.g. a local weights file (ViT-B-32=FILE) [default: "
                   "the one it was trained with].")
@click.option("--style-latent", type=click.Path(dir_okay=False, path_type=Path),
              help="A latent file (hyperdomain invert) or a one-shot domain file: its W+ layers from --mix-from on "
                   "replace the samples' (the paper's one-shot grids).")
@click.option("--mix-from", cls=LibraryDefault, owner=sample_method, type=click.IntRange(1),
              help="The first W+ layer taken from --style-latent.")
@click.option("--no-check", is_flag=True, help="Use domains made for a generator with another fingerprint.")
@overwrite_option
@device_option
@user_errors
def sample(generator, domains, with_source, n, truncation, seed, noise_mode, batch_size, out, separate,
           hyper, prompts, hyper_clip, style_latent, mix_from, no_check, overwrite, device):
    """Sample images from a generator, adapted by domain files or by a hypernetwork's prompts."""
    import hyperdomain as hd
    from hyperdomain.files.kinds import IMAGE
    from hyperdomain.training.adapt import slug

    if prompts and hyper is None:
        raise UserError("--prompt needs --hyper FILE (a hypernetwork that maps prompts to domains)")
    if hyper is not None and not prompts:
        raise UserError("--hyper needs at least one --prompt")
    with_source = with_source or not (domains or prompts)
    labels = unique_names(["source"] * with_source + [p.stem for p in domains] + [slug(q) for q in prompts])
    files = [[separate / f"{label}_{i:05d}.png" for i in range(n)] for label in labels] if separate else []
    check_outputs([("--out", out, IMAGE)] + [("--separate", f, IMAGE) for row in files for f in row],
                  [*domains, hyper, style_latent, generator, spec_file(hyper_clip)], overwrite)
    dev = resolve_device(device)
    G = hd.load_generator(generator, device=dev)
    loaded = [hd.Domain.load(p, generator=G, check=not no_check) for p in domains]
    if hyper is not None:
        loaded += load_hyper(hyper, G, no_check, hyper_clip).domains(list(prompts))
    rows = [None] * with_source + loaded
    import torch
    from tqdm import tqdm

    style = None if style_latent is None else read_style_latent(style_latent, G, no_check, mix_from)
    with tqdm(total=n * len(rows), desc="sampling", unit="image", disable=None, file=sys.stderr) as bar:
        images = [G.sample(n, domain=dom, truncation=truncation, seed=seed, batch_size=batch_size,
                           noise_mode=noise_mode, style=style, mix_from=mix_from, on_batch=bar.update)
                  for dom in rows]

    grid = torch.cat(images)
    hd.save_grid(grid, out, nrow=n if len(rows) > 1 else None)
    for row, imgs in zip(files, images):
        for f, img in zip(row, imgs):
            hd.save_grid(img[None], f, padding=0)
    click.echo(f"wrote {out} ({len(rows)} row(s) x {n} images, {G.resolution} px, generator {G.name})")


EXAMPLES_ADAPT = """
\b
Examples:
  hyperdomain adapt --target "3D render in the style of Pixar"
  hyperdomain adapt --target "Anime painting" --generator ffhq --loss direction=1 --loss indomain=0.5
  hyperdomain adapt --target "Sketch" --clip ViT-B-32=ViT-B-32.safetensors --clip ViT-B-16=ViT-B-16.safetensors
  hyperdomain adapt --image mermaid.png                     # one-shot, from a reference image
  hyperdomain adapt --image mermaid.png --target "Mermaid"  # an image and a prompt together
  hyperdomain adapt --resume runs/anime_painting            # after Ctrl-C, or --iters 600 to extend
"""
_RESUME_KEEPS = {"resume", "iters", "device", "generator", "clip", "progress", "input_clip", "lpips_vgg"}
_IMAGE_ONLY = ("align", "mix_from", "inversion_steps", "lpips_vgg", "detector", "detector_weights")


@main.command(epilog=EXAMPLES_ADAPT)
@click.option("--target", "-t", help="The target domain, in words (e.g. \"3D render in the style of Pixar\").")
@click.option("--image", "-i", type=click.Path(dir_okay=False, path_type=Path),
              help="A reference image: one-shot adaptation to its style (the paper's im2im); with --target too, "
                   "both steer the run.")
@click.option("--source", "-s", help="The source domain (default: the generator's, e.g. \"Photo\").")
@generator_option
@click.option("--clip", "clip", cls=LibraryDefault, owner=adapt_config, fallback=True, fallback_help="",
              multiple=True, metavar="NAME[:TAG][=FILE]",
              help="CLIP model(s), repeatable (TAG: open_clip's pretrained tag, openai by default). FILE: local "
                   "weights for offline use; NAME may be an open_clip model config .json.")
@click.option("--iters", cls=LibraryDefault, owner=adapt_config, fallback=True, also=(image_config, "with --image"),
              type=click.IntRange(1), help="Training steps.")
@click.option("--batch", cls=LibraryDefault, owner=adapt_config, fallback=True, also=(image_config, "with --image"),
              type=click.IntRange(1, 4096))
@click.option("--lr", cls=LibraryDefault, owner=adapt_config, fallback=True, also=(image_config, "with --image"),
              type=LEARNING_RATE, help="Adam learning rate.")
@click.option("--loss", "losses", cls=LibraryDefault, owner=adapt_config, fallback=True,
              also=(image_config, "with --image"), multiple=True, metavar="NAME=WEIGHT",
              help="Loss weights, repeatable: direction, global, indomain, l2; with --image also clip_within, "
                   "clip_ref, l2_rec, lpips_rec, text_direction.")
@click.option("--mixing", cls=LibraryDefault, owner=adapt_config, fallback=True, type=FiniteFloat(0, 1),
              help="Style-mixing probability of a batch.")
@click.option("--templates", cls=LibraryDefault, owner=adapt_config, type=LibraryChoice(template_sets),
              help="Prompt templates the text embeddings average over.")
@click.option("--seed", cls=LibraryDefault, owner=adapt_config, type=SEED)
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path),
              help="Run folder [default: runs/<target or image name>].")
@click.option("--sample-every", cls=LibraryDefault, owner=adapt_config, fallback=True, fallback_help="",
              also=(image_config, "with --image"), type=click.IntRange(0),
              help="Write a sample grid every N steps (0: only at the end).")
@click.option("--checkpoint-every", cls=LibraryDefault, owner=adapt_config, fallback=True, fallback_help="",
              also=(image_config, "with --image"), type=click.IntRange(0),
              help="Save a resumable checkpoint every N steps (0: only at the end and on Ctrl-C).")
@click.option("--align/--no-align", cls=LibraryDefault, owner=image_config,
              help="With --image: align the reference as a face (FFHQ's crop) before inverting it.")
@click.option("--mix-from", cls=LibraryDefault, owner=image_config, type=click.IntRange(1),
              help="With --image: the sample grid's style-mixed row takes W+ layers from here on from the reference.")
@click.option("--inversion-steps", cls=LibraryDefault, owner=inversion_config, field="steps", type=click.IntRange(1),
              help="With --image: steps of the reference's inversion (cached per image and settings).")
@click.option("--lpips-vgg", metavar="FILE",
              help="With --image: torchvision's VGG16 weights file for LPIPS (offline) [default: downloaded once]; "
                   "'random' checks the pipeline without weights (tests only).")
@click.option("--detector", type=click.Choice(["auto", "dlib", "mediapipe"]), default="auto", show_default=True,
              help="With --image --align: the face landmark detector.")
@click.option("--detector-weights", type=click.Path(dir_okay=False, path_type=Path),
              help="With --image --align: the detector's model file (offline) [default: downloaded once].")
@click.option("--resume", type=click.Path(file_okay=False, path_type=Path),
              help="Continue the run in this folder (its settings are kept; --iters may extend it).")
@click.option("--log", "log", multiple=True, metavar="tensorboard|wandb",
              help="Also log losses, learning rate, step time and sample grids to TensorBoard (RUN/tensorboard/) "
                   "or Weights & Biases; repeatable or a comma list [default: log.jsonl only].")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@device_option
@click.pass_context
@user_errors
def adapt(ctx, target, image, source, generator, clip, iters, batch, lr, losses, mixing, templates, seed, out,
          sample_every, checkpoint_every, align, mix_from, inversion_steps, lpips_vgg, detector, detector_weights,
          resume, progress, log, device):
    """Adapt a generator to a domain described in words, or shown by one reference image: trains one
    domain vector against CLIP."""
    import hyperdomain as hd
    from hyperdomain.training.adapt import DOMAIN_FILE, slug

    from hyperdomain.files.run_checkpoints import run_kind
    from hyperdomain.training.one_shot import read_image_adapt_config
    from hyperdomain.training.dashboards import parse_dashboards, require
    from hyperdomain.training.run_dir import refuse_existing_run

    dashboards = parse_dashboards(log)
    kind = run_kind(resume) if resume is not None else ("image" if image is not None else "adapt")
    if resume is not None:
        config = hd.read_adapt_config(resume) if kind == "adapt" else read_image_adapt_config(resume)
        generator = resumed_generator(ctx, config, generator)
        out = resume
        require(config.dashboards)  # before anything loads
    elif image is None and not target:
        raise UserError("--target or --image is required (or --resume DIR)")
    elif image is None:
        given = [o for o in _IMAGE_ONLY if ctx.get_parameter_source(o) is not click.core.ParameterSource.DEFAULT]
        if given:
            raise UserError(f"--{given[0].replace('_', '-')} is for one-shot runs (--image)")
    if resume is None:  # checked before anything loads
        out = out or Path("runs") / slug(image.stem if image is not None else target)
        check_run_folder(out)
        refuse_existing_run(out, kind)
        check_photos([image] if image is not None else [])
        require(dashboards)
    dev = resolve_device(device)
    G = hd.load_generator(generator, device=dev)
    if resume is None:
        check_photos([image] if image is not None else [], G)
    clips = [absolute_spec(c) for c in clip] or None
    settings = dict(batch=batch, lr=lr, losses=hd.LossWeights.parse(losses) if losses else None, mixing=mixing,
                    seed=seed, templates=templates, sample_every=sample_every, checkpoint_every=checkpoint_every,
                    generator=absolute_path(generator), dashboards=dashboards)
    try:
        if kind == "image":
            if resume is not None:
                from hyperdomain.image.perceptual import load_lpips

                lpips = None if lpips_vgg is None else load_lpips(dev, lpips_vgg)  # e.g. the run's file moved
                domain = hd.adapt_image(G, resume=resume, clip=clips, iters=iters, lpips=lpips, progress=progress)
            else:
                det = None
                if align:
                    from hyperdomain.image.face_detectors import detector as face_detector

                    det = face_detector(detector, detector_weights)
                domain = hd.adapt_image(G, image, target, clip=clips, out_dir=out, progress=progress, detector=det,
                                        iters=iters, source=source, align=align, mix_from=mix_from,
                                        inversion=hd.InversionConfig(steps=inversion_steps),
                                        lpips_backbone=absolute_path(lpips_vgg) if lpips_vgg else None, **settings)
        else:
            kwargs = {} if resume is not None else dict(target=target, source=source, **settings)
            if resume is None:
                kwargs = {k: v for k, v in kwargs.items() if v is not None or k in ("target", "source")}
            domain = hd.adapt(G, clip=clips, iters=iters, out_dir=out, progress=progress, resume=resume, **kwargs)
    except KeyboardInterrupt as stop:
        interrupted(ctx, out, "adapt", stop)
    what = f"prompt {domain.meta['prompt']!r}" if domain.meta.get("prompt") else ""
    if domain.meta.get("reference_image"):
        what = f"reference {domain.meta['reference_image']}" + (f", {what}" if what else "")
    click.echo(f"wrote {out / DOMAIN_FILE} ({len(domain)} numbers, {domain.meta['iterations']} steps, {what}) "
               f"and {out / 'samples.png'}")


def photo_options(fn):
    """The options every command that reads photos shares: alignment, detector, LPIPS, inversion."""
    for option in reversed([
        click.option("--align/--no-align", default=None,
                     help="Align each photo as FFHQ's faces [default: on for face generators (ffhq, metfaces)]."),
        click.option("--detector", type=click.Choice(["auto", "dlib", "mediapipe"]), default="auto",
                     show_default=True, help="The face landmark detector for --align."),
        click.option("--detector-weights", type=click.Path(dir_okay=False, path_type=Path),
                     help="The detector's model file (offline) [default: downloaded once]."),
        click.option("--lpips-vgg", metavar="FILE",
                     help="torchvision's VGG16 weights file for LPIPS (offline) [default: downloaded once]; "
                          "'random' checks the pipeline without weights (tests only)."),
        click.option("--steps", cls=LibraryDefault, owner=inversion_config, type=click.IntRange(1),
                     help="Inversion steps."),
        click.option("--lr", cls=LibraryDefault, owner=inversion_config, type=LEARNING_RATE,
                     help="The inversion's Adam learning rate."),
        click.option("--pca-samples", cls=LibraryDefault, owner=inversion_config, type=click.IntRange(2),
                     help="Mapped latents behind the P-norm prior (computed once per generator, cached)."),
    ]):
        fn = option(fn)
    return fn


def check_photos(photos, G=None) -> None:
    """Read every photo before the work: before the models load (``G`` None), all but the size, which
    the generator sets (:func:`hyperdomain.image.photos.min_photo_side`), so a bad one is named in seconds;
    with ``G``, the size too, before LPIPS, the detector or a run folder."""
    from hyperdomain.image.photos import min_photo_side, read_photo

    for p in photos:
        read_photo(p, min_photo_side(G.resolution) if G is not None else 1)


def inversion_tools(G, align, detector, detector_weights, lpips_vgg, steps, lr, pca_samples):
    """The detector (when aligning), LPIPS and inversion settings the photo options ask for."""
    import hyperdomain as hd
    from hyperdomain.image.perceptual import load_lpips

    aligning = align if align is not None else G.alignment == "ffhq"
    det = None
    if aligning:
        from hyperdomain.image.face_detectors import detector as face_detector

        det = face_detector(detector, detector_weights)
    lpips = load_lpips(G.device, absolute_path(lpips_vgg) if lpips_vgg is not None else "imagenet")
    return aligning, det, lpips, hd.InversionConfig(steps=steps, lr=lr, pca_samples=pca_samples)


@main.command()
@click.argument("photos", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@generator_option
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for each photo's latent (NAME.safetensors) and reconstruction (NAME.png).")
@photo_options
@click.option("--progress/--no-progress", default=True)
@overwrite_option
@device_option
@user_errors
def invert(photos, generator, out, align, detector, detector_weights, lpips_vgg, steps, lr, pca_samples, progress,
           overwrite, device):
    """Put photos into the generator: one W+ latent per photo (the paper's II2S inversion).

    \b
    Example:
      hyperdomain invert me.jpg friend.png --out latents/
      hyperdomain stylize --latent latents/me.safetensors --domain pixar.safetensors --out styled/
    """
    import hyperdomain as hd
    from hyperdomain.files.kinds import IMAGE, LATENT_KIND

    names = unique_stems(photos)
    check_outputs([("--out", out / f"{n}.safetensors", LATENT_KIND) for n in names]
                  + [("--out", out / f"{n}.png", IMAGE) for n in names],
                  [*photos, generator, detector_weights, lpips_vgg], overwrite)
    check_photos(photos)
    G = hd.load_generator(generator, device=resolve_device(device))
    check_photos(photos, G)
    aligning, det, lpips, config = inversion_tools(G, align, detector, detector_weights, lpips_vgg, steps, lr,
                                                   pca_samples)
    latents = hd.invert(G, [str(p) for p in photos], config, align=aligning, detector=det, lpips=lpips,
                        progress=progress)
    import torch

    for name, photo, latent in zip(names, photos, latents):
        latent.save(out / f"{name}.safetensors")
        with torch.no_grad():
            recon = G.synthesis(latent.ws[None].to(G.device), noise_mode=config.noise_mode)
        hd.save_grid(recon, out / f"{name}.png", padding=0)
        click.echo(f"{photo}: PSNR {latent.meta['psnr']:.2f} dB, LPIPS {latent.meta['lpips']:.4f} -> "
                   f"{out / (name + '.safetensors')} and {out / (name + '.png')}")


@main.command()
@click.argument("photos", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--latent", "latents", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A latent file from hyperdomain invert, instead of inverting a photo again; repeatable.")
@generator_option
@click.option("--domain", "-d", "domains", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A domain file; repeatable (one column each).")
@click.option("--hyper", type=click.Path(dir_okay=False, path_type=Path), help="A hypernetwork file, with --prompt.")
@click.option("--prompt", "-p", "prompts", multiple=True, help="A domain in words for --hyper; repeatable.")
@click.option("--hyper-clip", metavar="SPEC", help="The hypernetwork's prompt encoder (e.g. ViT-B-32=FILE offline).")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for one grid per photo (NAME.png: the photo, its reconstruction, each domain) and "
                   "its latent (NAME.safetensors).")
@click.option("--separate", type=click.Path(file_okay=False, path_type=Path),
              help="Also write every image on its own (NAME_photo.png, NAME_reconstruction.png, NAME_DOMAIN.png).")
@photo_options
@click.option("--no-check", is_flag=True, help="Use domains or latents made for a generator with another fingerprint.")
@click.option("--progress/--no-progress", default=True)
@overwrite_option
@device_option
@user_errors
def stylize(photos, latents, generator, domains, hyper, prompts, hyper_clip, out, separate, align, detector,
            detector_weights, lpips_vgg, steps, lr, pca_samples, no_check, progress, overwrite, device):
    """Your own photos in any domain: align, invert (or reuse a latent), render in every domain.

    \b
    Examples:
      hyperdomain stylize me.jpg --domain pixar.safetensors --domain anime.safetensors --out styled/
      hyperdomain stylize me.jpg --hyper hdn.safetensors -p "Pixar" -p "Mosaic" --out styled/
    """
    import hyperdomain as hd
    from hyperdomain.files.kinds import IMAGE, LATENT_KIND
    from hyperdomain.training.adapt import slug

    if not photos and not latents:
        raise UserError("give photos to stylize (or --latent files from hyperdomain invert)")
    if prompts and hyper is None:
        raise UserError("--prompt needs --hyper FILE (a hypernetwork that maps prompts to domains)")
    if hyper is not None and not prompts:
        raise UserError("--hyper needs at least one --prompt")
    if not domains and hyper is None:
        raise UserError("give at least one --domain (or --hyper with --prompt)")
    names = unique_stems(list(photos) + list(latents))
    columns = unique_names(["photo", "reconstruction"] + [p.stem for p in domains] + [slug(q) for q in prompts])
    labels = columns[2:]
    outputs = [("--out", out / f"{n}.png", IMAGE) for n in names]
    outputs += [("--out", out / f"{n}.safetensors", LATENT_KIND) for n in names[:len(photos)]]
    if separate is not None:
        outputs += [("--separate", separate / f"{n}_{c}.png", IMAGE) for n in names for c in columns]
    check_outputs(outputs, [*photos, *latents, *domains, hyper, generator, spec_file(hyper_clip), detector_weights,
                            lpips_vgg], overwrite)
    check_photos(photos)
    G = hd.load_generator(generator, device=resolve_device(device))
    check_photos(photos, G)
    loaded = [hd.Domain.load(p, generator=G, check=not no_check) for p in domains]
    if hyper is not None:
        loaded += load_hyper(hyper, G, no_check, hyper_clip).domains(list(prompts))
    lat = [hd.Latent.load(p, generator=G, check=not no_check) for p in latents]
    aligning, det, lpips, config = (inversion_tools(G, align, detector, detector_weights, lpips_vgg, steps, lr,
                                                    pca_samples) if photos else (False, None, None, None))
    rows = hd.stylize(G, [str(p) for p in photos], loaded, latents=lat, config=config, align=aligning, detector=det,
                      lpips=lpips, progress=progress)
    for i, (name, row) in enumerate(zip(names, rows)):
        hd.save_grid(row.row(), out / f"{name}.png", nrow=len(loaded) + 2)
        if i < len(photos):  # a new inversion: kept for later runs (--latent)
            row.latent.save(out / f"{name}.safetensors")
        if separate is not None:
            for label, img in zip(columns, row.row()):
                hd.save_grid(img[None], separate / f"{name}_{label}.png", padding=0)
        click.echo(f"{out / (name + '.png')}: photo, reconstruction, {', '.join(labels)}")


EXAMPLES_HYPER = """
\b
Examples:
  hyperdomain train-hyper                                   # the shipped 464 prompts, FFHQ, paper defaults
  hyperdomain train-hyper --domains my_domains.txt --test-domains held_out.txt --iters 20000 --out runs/hdn
  torchrun --nproc_per_node 4 -m cli.main train-hyper --batch 32   # DDP, the global batch split over 4 GPUs
  hyperdomain train-hyper --resume runs/hyper               # after Ctrl-C; works with another process count
"""


@main.command(name="train-hyper", epilog=EXAMPLES_HYPER)
@click.option("--domains", cls=LibraryDefault, owner=hyper_config,
              help="Domain list: one 'Target - Source' per line (source optional), or builtin:train.")
@click.option("--test-domains", cls=LibraryDefault, owner=hyper_config,
              help="Held-out prompts shown in the sample grids; 'none' for none.")
@generator_option
@click.option("--clip", "clip", cls=LibraryDefault, owner=hyper_config, fallback=True, fallback_help="",
              multiple=True, metavar="NAME[:TAG][=FILE]", help="CLIP model(s) of the losses, repeatable.")
@click.option("--input-clip", cls=LibraryDefault, owner=hyper_config, metavar="NAME[:TAG][=FILE]",
              help="The CLIP model whose bare-prompt embedding is the network's input.")
@click.option("--iters", cls=LibraryDefault, owner=hyper_config, type=click.IntRange(1), help="Training steps.")
@click.option("--batch", cls=LibraryDefault, owner=hyper_config, type=click.IntRange(2),
              help="Global batch (all processes).")
@click.option("--lr", cls=LibraryDefault, owner=hyper_config, type=LEARNING_RATE)
@click.option("--loss", "losses", cls=LibraryDefault, owner=hyper_config, fallback=True, fallback_help="",
              multiple=True, metavar="NAME=WEIGHT", help="Loss weights, repeatable.")
@click.option("--convex-hull/--no-convex-hull", cls=LibraryDefault, owner=hyper_config,
              help="Train on Dirichlet mixtures of the batch's prompts.")
@click.option("--resample-cos", cls=LibraryDefault, owner=hyper_config,
              type=FiniteFloat(0, 1, min_open=True, max_open=True),
              help="Resample target text embeddings at cosine >= this.")
@click.option("--no-resample", is_flag=True, help="Switch the resampling off.")
@click.option("--crop", cls=LibraryDefault, owner=hyper_config, type=FiniteFloat(0, 1, min_open=True),
              help="Side fraction of the random crop before CLIP (1: none).")
@click.option("--mixing", cls=LibraryDefault, owner=hyper_config, type=FiniteFloat(0, 1))
@click.option("--templates", cls=LibraryDefault, owner=hyper_config, type=LibraryChoice(template_sets))
@click.option("--width", cls=LibraryDefault, owner=hyper_config, type=click.IntRange(1, 16384), help="Hidden width.")
@click.option("--seed", cls=LibraryDefault, owner=hyper_config, type=SEED)
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/hyper"),
              show_default=True)
@click.option("--sample-every", cls=LibraryDefault, owner=hyper_config, type=click.IntRange(0))
@click.option("--checkpoint-every", cls=LibraryDefault, owner=hyper_config, type=click.IntRange(0))
@click.option("--resume", type=click.Path(file_okay=False, path_type=Path),
              help="Continue the run in this folder (its settings are kept; --iters may extend it).")
@click.option("--log", "log", multiple=True, metavar="tensorboard|wandb",
              help="Also log losses, learning rate, step time and sample grids to TensorBoard (RUN/tensorboard/) "
                   "or Weights & Biases; repeatable or a comma list [default: log.jsonl only].")
@click.option("--progress/--no-progress", default=True)
@device_option
@click.pass_context
@user_errors
def train_hyper(ctx, domains, test_domains, generator, clip, input_clip, iters, batch, lr, losses, convex_hull,
                resample_cos, no_resample, crop, mixing, templates, width, seed, out, sample_every,
                checkpoint_every, resume, progress, log, device):
    """Train a HyperDomainNet: one network that maps any prompt to a domain vector."""
    import hyperdomain as hd
    from hyperdomain import distributed
    from hyperdomain.training.dashboards import parse_dashboards, require

    dashboards = parse_dashboards(log)
    require(hd.read_hyper_config(resume).dashboards if resume is not None else dashboards)  # before anything loads
    if device != "auto":
        resolve_device(device)
    dist = distributed.setup(device)
    try:
        options = {}
        config = None
        if resume is not None:
            generator = resumed_generator(ctx, hd.read_hyper_config(resume), generator)
            out = resume
            if ctx.get_parameter_source("iters") is not click.core.ParameterSource.DEFAULT:
                options["iters"] = iters
            if clip:  # e.g. the run's CLIP files moved: checked against the run's models
                options["clip"] = [absolute_spec(c) for c in clip]
            if ctx.get_parameter_source("input_clip") is not click.core.ParameterSource.DEFAULT:
                options["input_clip"] = absolute_spec(input_clip)
        if resume is None:  # checked before anything loads
            from hyperdomain.training.run_dir import refuse_existing_run

            check_run_folder(out)
            refuse_existing_run(out, "hyper")
        G = hd.load_generator(generator, device=dist.device)
        if resume is None:
            given = {"losses": hd.LossWeights.parse(losses)} if losses else {}
            if clip:
                given["clip"] = tuple(absolute_spec(c) for c in clip)
            config = hd.HyperTrainConfig(
                domains=absolute_path(domains),
                test_domains=None if test_domains == "none" else absolute_path(test_domains),
                input_clip=absolute_spec(input_clip), iters=iters, batch=batch, lr=lr,
                convex_hull=convex_hull, resample_cos=None if no_resample else resample_cos, crop=crop,
                mixing=mixing, templates=templates, width=width, seed=seed, sample_every=sample_every,
                checkpoint_every=checkpoint_every, source=G.source_prompt, generator=absolute_path(generator),
                dashboards=dashboards, **given)
        try:
            net = hd.train_hyper(G, config, out_dir=out, resume=resume, dist=dist, progress=progress, **options)
        except KeyboardInterrupt as stop:
            interrupted(ctx, out, "train-hyper", stop, say=dist.is_main)
        if dist.is_main:
            from hyperdomain.training.hyper import HYPERNET_FILE

            click.echo(f"wrote {out / HYPERNET_FILE} ({net.meta['iterations']} steps, "
                       f"{len(net.meta['train_prompts'])} training prompts) and {out / 'samples.png'}")
    finally:
        distributed.teardown(dist)


@main.command()
@click.option("--hyper", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Hypernetwork file.")
@click.option("--prompt", "-p", required=True, help="The domain, in words.")
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Domain file to write (.safetensors).")
@click.option("--hyper-clip", metavar="SPEC", help="The prompt encoder (e.g. ViT-B-32=FILE offline).")
@overwrite_option
@user_errors
def export(hyper, prompt, out, hyper_clip, overwrite):
    """Freeze one prompt of a hypernetwork into a domain file.

    \b
    Example:
      hyperdomain export --hyper runs/hyper/hypernet.safetensors --prompt "Anime painting" --out anime.safetensors
    """
    import hyperdomain as hd
    from hyperdomain.files.kinds import DOMAIN_KIND

    check_outputs([("--out", out, DOMAIN_KIND)], [hyper, spec_file(hyper_clip)], overwrite)
    net = hd.HyperDomainNet.load(hyper)
    if hyper_clip:
        net.text_encoder(absolute_spec(hyper_clip))
    domain = net.domain(prompt)
    domain.save(out)
    click.echo(f"wrote {out} ({len(domain)} numbers, prompt {prompt!r})")


@main.command()
@generator_option
@click.option("--domain", "-d", "domains", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Domain file to score against its own prompt; repeatable.")
@click.option("--hyper", type=click.Path(dir_okay=False, path_type=Path), help="A hypernetwork file.")
@click.option("--prompt", "-p", "prompts", multiple=True, help="A prompt for --hyper; repeatable.")
@click.option("--prompts", "prompt_list", help="A domain list of prompts for --hyper (e.g. builtin:heldout).")
@click.option("--source", "with_source", is_flag=True, help="Also score the unadapted generator (the baseline).")
@click.option("--clip", cls=LibraryDefault, owner=evaluate_function, metavar="NAME[:TAG][=FILE]",
              help="The judging CLIP model; prefer one not used in training.")
@click.option("--hyper-clip", metavar="SPEC", help="The hypernetwork's prompt encoder [default: its own].")
@click.option("-n", "--num", "n", cls=LibraryDefault, owner=evaluate_function, type=click.IntRange(2))
@click.option("--seed", cls=LibraryDefault, owner=evaluate_function, type=SEED)
@click.option("--truncation", cls=LibraryDefault, owner=evaluate_function, type=FiniteFloat(0.0, 2.0))
@click.option("--templates", cls=LibraryDefault, owner=evaluate_function, field="template_set",
              type=LibraryChoice(template_sets))
@click.option("--batch-size", cls=LibraryDefault, owner=evaluate_function, type=click.IntRange(1, 1024))
@click.option("--out", "-o", "outs", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Write the rows to .json and/or .csv; repeatable.")
@click.option("--no-check", is_flag=True, help="Allow domains or a hypernetwork made for another fingerprint.")
@overwrite_option
@device_option
@user_errors
def evaluate(generator, domains, hyper, prompts, prompt_list, with_source, clip, hyper_clip, n, seed, truncation,
             templates, batch_size, outs, no_check, overwrite, device):
    """Score domains by CLIP quality (cosine to the prompt) and diversity (pairwise distance).

    \b
    Examples:
      hyperdomain evaluate --domain runs/pixar/domain.safetensors --source -o scores.json
      hyperdomain evaluate --hyper runs/hyper/hypernet.safetensors --prompts builtin:heldout -n 100 -o held.csv
    """
    import hyperdomain as hd
    from hyperdomain.guidance.evaluation import format_table, write_results
    from hyperdomain.files.kinds import RESULTS

    for o in outs:
        if o.suffix.lower() not in (".json", ".csv"):
            raise UserError(f"--out {o}: results go to a .json or .csv file")
    check_outputs([("--out", o, RESULTS) for o in outs],
                  [*domains, hyper, prompt_list, generator, spec_file(clip), spec_file(hyper_clip)], overwrite)
    dev = resolve_device(device)
    G = hd.load_generator(generator, device=dev)
    loaded = [hd.Domain.load(p, generator=G, check=not no_check) for p in domains]
    net = load_hyper(hyper, G, no_check, hyper_clip) if hyper is not None else None
    all_prompts = list(prompts)
    if prompt_list:
        from hyperdomain.guidance.domain_lists import read_domain_list

        all_prompts += [d.target for d in read_domain_list(prompt_list, G.source_prompt)]
    rows = hd.evaluate(G, loaded, hypernet=net, prompts=all_prompts, source=with_source, clip=absolute_spec(clip),
                       n=n, seed=seed, truncation=truncation, template_set=templates, batch_size=batch_size)
    click.echo(format_table(rows))
    for o in outs:
        write_results(rows, o)
        click.echo(f"wrote {o}")


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@user_errors
def info(file):
    """Print what a generator checkpoint, domain file or foreign checkpoint holds."""
    from hyperdomain.model.describe import describe

    for key, value in describe(file).items():
        click.echo(f"{key:>22}: {value}")


@main.command(name="import")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Domain file to write (.safetensors).")
@click.option("--prompt", help="The target prompt it was trained for (the paper's files do not record it).")
@click.option("--source", "source_prompt", help="Source prompt (default: the generator's, e.g. 'Photo').")
@overwrite_option
@user_errors
def import_(checkpoint, out, prompt, source_prompt, overwrite):
    """Convert one of the paper's released checkpoints: a domain (td_*.pt) or a hypernetwork (mapper_*.pt).

    \b
    Example:
      hyperdomain import td_pixar.pt --prompt "3D render in the style of Pixar" --out pixar.safetensors
      hyperdomain import mapper_large_resample_td.pt --out hdn.safetensors
    """
    import hyperdomain as hd
    from hyperdomain.files.kinds import DOMAIN_KIND, HYPERNET_KIND
    from hyperdomain.model.paper_checkpoints import paper_model_type

    mapper = paper_model_type(checkpoint) == "mapper"  # a HyperDomainNet: written as a hypernetwork file
    check_outputs([("--out", out, HYPERNET_KIND if mapper else DOMAIN_KIND)], [checkpoint], overwrite)
    if mapper:
        net = hd.import_hypernet(checkpoint)
        net.save(out)
        click.echo(f"wrote {out} (a hypernetwork: {sum(net.domain_dims)}-number domains, "
                   f"{len(net.domain_dims)} convs, input {net.meta.get('input_clip') or 'image embeddings'})")
        return
    domain = hd.import_checkpoint(checkpoint, prompt=prompt, source_prompt=source_prompt)
    domain.save(out)
    prompt = domain.meta.get("prompt")
    click.echo(f"wrote {out} ({len(domain)} numbers, {len(domain.dims)} convs"
               + (f", prompt {prompt!r}" if prompt else "") + ")")


@main.command()
@click.argument("names", nargs=-1)
@click.option("--list", "list_", is_flag=True, help="List the known generators and where they are stored.")
@user_errors
def download(names, list_):
    """Download known weights (verified by sha256) into $HYPERDOMAIN_HOME: generators, and the
    models some features need (LPIPS's VGG16, face landmark detectors).

    \b
    Examples:
      hyperdomain download ffhq
      hyperdomain download vgg16 dlib-68
      hyperdomain download --list
    """
    from hyperdomain.files.pretrained import download as fetch, load_manifest, load_models, weights_home

    manifest = load_manifest()
    if list_ or not names:
        home = weights_home()
        for name, e in manifest.items():
            have = "downloaded" if (home / e.filename).is_file() else "-"
            click.echo(f"{name:<14} {e.resolution:>5} px  {e.format:<14} {have:<10} {e.description}")
        for name, m in load_models().items():
            have = "downloaded" if (home / m.filename).is_file() else "-"
            click.echo(f"{name:<14} {'model':>8}  {'':<14} {have:<10} {m.description}")
        click.echo(f"weights folder: {home}")
        return
    for name in names:
        path = fetch(name)
        click.echo(f"{name}: {path}")


from .dataset_command import dataset_command  # noqa: E402 (registered last: it uses this module's helpers)

main.add_command(dataset_command(sys.modules[__name__]))

from . import animate_command  # noqa: E402  (built from this module's shared options: no second copy of it)

main.add_command(animate_command.build(sys.modules[__name__]))

from . import serve_command  # noqa: E402

main.add_command(serve_command.build(sys.modules[__name__]))


if __name__ == "__main__":  # pragma: no cover
    main()
