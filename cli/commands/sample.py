"""`hyperdomain sample`: a grid of samples, one row per domain."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import user_errors
from ..loading import check_domain_source, load_domains, read_style_latent, resolve_device
from ..options import (SEED, FiniteFloat, LibraryChoice, LibraryDefault, device_option, domain_source_options,
                       generator_option, noise_modes, sample_method)
from ..outputs import check_outputs, overwrite_option, spec_file, unique_names

EXAMPLES = """
\b
Examples:
  hyperdomain sample --generator ffhq -n 16 --out grid.png
  hyperdomain sample --generator ffhq --domain pixar.safetensors --domain anime.safetensors \\
      --with-source -n 8 --out rows.png --separate frames/
  hyperdomain sample --hyper hdn.safetensors -p "Anime painting" -p "Sketch" --out prompts.png
"""


@click.command(epilog=EXAMPLES)
@generator_option
@domain_source_options(domains="Domain file (.safetensors); repeat for one grid row per domain.")
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
@click.option("--style-latent", type=click.Path(dir_okay=False, path_type=Path),
              help="A latent file (hyperdomain invert) or a one-shot domain file: its W+ layers from --mix-from on "
                   "replace the samples' (the paper's one-shot grids).")
@click.option("--mix-from", cls=LibraryDefault, owner=sample_method, type=click.IntRange(1),
              help="The first W+ layer taken from --style-latent.")
@overwrite_option
@device_option
@user_errors
def sample(generator, domains, hyper, prompts, hyper_clip, no_check, with_source, n, truncation, seed, noise_mode,
           batch_size, out, separate, style_latent, mix_from, overwrite, device):
    """Sample images from a generator, adapted by domain files or by a hypernetwork's prompts."""
    import hyperdomain as hd
    from hyperdomain.files.kinds import IMAGE
    from hyperdomain.training.adapt import slug

    check_domain_source(domains, hyper, prompts)
    with_source = with_source or not (domains or prompts)
    labels = unique_names(["source"] * with_source + [p.stem for p in domains] + [slug(q) for q in prompts])
    files = [[separate / f"{label}_{i:05d}.png" for i in range(n)] for label in labels] if separate else []
    check_outputs([("--out", out, IMAGE)] + [("--separate", f, IMAGE) for row in files for f in row],
                  [*domains, hyper, style_latent, generator, spec_file(hyper_clip)], overwrite)
    G = hd.load_generator(generator, device=resolve_device(device))
    rows = [None] * with_source + load_domains(G, domains, hyper, prompts, hyper_clip, no_check)
    import torch
    from tqdm import tqdm

    style = None if style_latent is None else read_style_latent(style_latent, G, no_check, mix_from)
    with tqdm(total=n * len(rows), desc="sampling", unit="image", disable=None, file=sys.stderr) as bar:
        images = [G.sample(n, domain=dom, truncation=truncation, seed=seed, batch_size=batch_size,
                           noise_mode=noise_mode, style=style, mix_from=mix_from, on_batch=bar.update)
                  for dom in rows]
    hd.save_grid(torch.cat(images), out, nrow=n if len(rows) > 1 else None)
    for row, imgs in zip(files, images):
        for f, img in zip(row, imgs):
            hd.save_grid(img[None], f, padding=0)
    click.echo(f"wrote {out} ({len(rows)} row(s) x {n} images, {G.resolution} px, generator {G.name})")
