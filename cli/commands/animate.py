"""`hyperdomain animate`: a GIF, WebP or MP4 of a grid of seeds (thin: ``hyperdomain.animate`` does the work)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import UserError, user_errors
from ..loading import check_domain_source, load_domains, resolve_device
from ..options import SEED, FiniteFloat, LibraryDefault, device_option, domain_source_options, generator_option
from ..outputs import check_outputs, overwrite_option, spec_file

EXAMPLES = """
\b
Examples:
  hyperdomain animate --domain pixar.safetensors --out pixar.gif                 # strength 0 -> 1
  hyperdomain animate --domain pixar.safetensors --bounce --fps 30 --size 256 --out pixar.mp4
  hyperdomain animate --domain pixar.safetensors --domain anime.safetensors --with-source --out morph.webp
  hyperdomain animate --hyper hdn.safetensors -p "Anime painting" -p "Sketch" --out morph.gif
  hyperdomain animate --mode walk --domain pixar.safetensors --walk-keys 4 --bounce --out walk.mp4
"""


def animate_function():
    from hyperdomain import animate

    return animate


@click.command(name="animate", epilog=EXAMPLES)
@generator_option
@domain_source_options(domains="Domain file (.safetensors); repeat for a morph through several, in order (a "
                               "hypernetwork's --prompt domains follow them).")
@click.option("--with-source", is_flag=True, help="Morph: start from the source generator.")
@click.option("--mode", type=click.Choice(["strength", "morph", "walk"]),
              help="strength: one domain from 0 to 1; morph: through the domains in order; walk: between "
                   "seeds in one domain (or the source). [default: strength for one domain, morph for more, "
                   "walk for none]")
@click.option("--frames", cls=LibraryDefault, owner=animate_function, type=click.IntRange(2, 100_000),
              help="Frames of the way out (--bounce adds the way back).")
@click.option("--fps", cls=LibraryDefault, owner=animate_function, type=FiniteFloat(),
              help="Frames per second, from 0.01 (GIF: at most 50, WebP and MP4 120).")
@click.option("-n", "--num", "n", cls=LibraryDefault, owner=animate_function, field="n",
              type=click.IntRange(1, 1024), help="Images (seeds) in the grid.")
@click.option("--nrow", type=click.IntRange(1), help="Images per grid row [default: a square grid].")
@click.option("--size", type=click.IntRange(1), help="Downscale each image to this many pixels a side.")
@click.option("--seed", cls=LibraryDefault, owner=animate_function, type=SEED)
@click.option("--truncation", cls=LibraryDefault, owner=animate_function, type=FiniteFloat(0.0, 2.0))
@click.option("--walk-keys", cls=LibraryDefault, owner=animate_function, type=click.IntRange(2, 10_000),
              help="Walk: the seeds passed through (--seed, --seed + 1, ...).")
@click.option("--bounce", is_flag=True, help="Go back to the start (strength 0 -> 1 -> 0).")
@click.option("--loop/--no-loop", default=True, show_default=True,
              help="GIF and WebP: play for ever, or once.")
@click.option("--quality", type=click.IntRange(1, 100),
              help="WebP: lossy at this quality [default: lossless]; MP4: [default: CRF 18]. Not for GIF.")
@click.option("--batch-size", cls=LibraryDefault, owner=animate_function, type=click.IntRange(1, 1024))
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The animation to write: .gif, .webp or .mp4 (MP4 needs pip install 'hyperdomain[ui]').")
@overwrite_option
@device_option
@user_errors
def animate(generator, domains, hyper, prompts, hyper_clip, with_source, mode, frames, fps, n, nrow, size, seed,
            truncation, walk_keys, bounce, loop, quality, batch_size, out, no_check, overwrite, device):
    """Animate a grid of seeds: a domain's strength, a morph through domains, or a latent walk."""
    from hyperdomain.media.animation import check_animation_file, frame_count
    from hyperdomain.files.kinds import ANIMATION

    check_domain_source(domains, hyper, prompts)
    count = len(domains) + len(prompts)
    mode = mode or ("walk" if count == 0 else "strength" if count == 1 else "morph")
    if with_source and mode != "morph":
        raise UserError(f"--with-source is for --mode morph (--mode {mode} starts from the source itself)"
                            if mode == "strength" else "--with-source is for --mode morph")
    needs = {"strength": (count == 1, "exactly one domain"), "walk": (count <= 1, "at most one domain"),
             "morph": (count + with_source >= 2, "at least two domains (--with-source counts as one)")}
    ok, what = needs[mode]
    if not ok:
        raise UserError(f"--mode {mode} needs {what} from --domain/--prompt, got {count}")
    check_outputs([("--out", out, ANIMATION)], [*domains, hyper, generator, spec_file(hyper_clip)], overwrite)
    check_animation_file(out, fps, quality)  # the type, fps for it, and MP4's package: before any loading

    import hyperdomain as hd
    from tqdm import tqdm

    G = hd.load_generator(generator, device=resolve_device(device))
    if size is not None and size > G.resolution:
        raise UserError(f"--size {size}: at most the generator's {G.resolution} px (images are only made "
                            f"smaller)")
    loaded = [None] * with_source + load_domains(G, domains, hyper, prompts, hyper_clip, no_check)
    total = frame_count(frames, bounce, loop)
    with tqdm(total=total, desc=f"animate ({mode})", unit="frame", disable=None, file=sys.stderr) as bar:
        hd.animate(G, out, mode, loaded, frames=frames, fps=fps, n=n, seed=seed, truncation=truncation, size=size,
                   nrow=nrow, loop=loop, bounce=bounce, walk_keys=walk_keys, quality=quality,
                   batch_size=batch_size, on_frame=bar.update)
    side = size or G.resolution
    click.echo(f"wrote {out} ({total} frames at {fps:g} fps, {n} images of {side} px, mode {mode}, "
               f"generator {G.name})")

