"""`hyperdomain` command group. Thin: every command parses, calls the library, reports."""
from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import click

EXAMPLES_SAMPLE = """
\b
Examples:
  hyperdomain sample --generator ffhq -n 16 --out grid.png
  hyperdomain sample --generator ffhq --domain pixar.safetensors --domain anime.safetensors \\
      --with-source -n 8 --out rows.png --separate frames/
"""


class UserError(click.ClickException):
    """A bad file or argument: one line on stderr, exit code 2."""

    exit_code = 2


def user_errors(fn):
    """Turn the library's HyperdomainError into a one-line CLI error (exit 2)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from hyperdomain.errors import HyperdomainError

        try:
            return fn(*args, **kwargs)
        except HyperdomainError as e:
            raise UserError(str(e)) from None
        except KeyboardInterrupt:
            raise click.Abort() from None
    return wrapper


def resolve_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device: expected auto, cpu or cuda:N, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) present")
    return dev


device_option = click.option("--device", default="auto", show_default=True,
                             help="auto, cpu, cuda or cuda:N.")
generator_option = click.option("--generator", "-g", default="ffhq", show_default=True,
                                help="Manifest name (see `hyperdomain download --list`) or checkpoint path.")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="hyperdomain")
def main(verbose: int) -> None:
    """hyperdomain: adapt a frozen StyleGAN2 to new domains with a ~6k-number domain vector."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@main.command(epilog=EXAMPLES_SAMPLE)
@generator_option
@click.option("--domain", "-d", "domains", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Domain file (.safetensors); repeat for one grid row per domain.")
@click.option("--with-source", is_flag=True, help="Add the source generator as the first row.")
@click.option("-n", "--num", "n", type=click.IntRange(1, 10_000), default=16, show_default=True,
              help="Images per domain.")
@click.option("--truncation", type=click.FloatRange(0.0, 2.0), default=0.7, show_default=True)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--noise-mode", type=click.Choice(["const", "random", "none"]), default="const", show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 1024), default=8, show_default=True)
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), default=Path("grid.png"),
              show_default=True, help="Grid image to write (.png, .jpg, .webp).")
@click.option("--separate", type=click.Path(file_okay=False, path_type=Path),
              help="Also write every image as its own PNG into this folder.")
@click.option("--no-check", is_flag=True, help="Use domains made for a generator with another fingerprint.")
@device_option
@user_errors
def sample(generator, domains, with_source, n, truncation, seed, noise_mode, batch_size, out, separate,
           no_check, device):
    """Sample images from a generator, optionally adapted by domain files."""
    import hyperdomain as hd

    dev = resolve_device(device)
    G = hd.load_generator(generator, device=dev)
    loaded = [hd.Domain.load(p, generator=G, check=not no_check) for p in domains]
    rows: list[tuple[str, object]] = []
    if with_source or not loaded:
        rows.append(("source", None))
    rows += [(p.stem, d) for p, d in zip(domains, loaded)]
    import torch
    from tqdm import tqdm

    images = [G.sample(n, domain=dom, truncation=truncation, seed=seed, batch_size=batch_size, noise_mode=noise_mode)
              for _, dom in tqdm(rows, desc="sampling", unit="row", disable=None, file=sys.stderr)]

    grid = torch.cat(images)
    hd.save_grid(grid, out, nrow=n if len(rows) > 1 else None)
    if separate is not None:
        for (label, _), imgs in zip(rows, images):
            hd.save_images(imgs, separate, prefix=f"{label}_")
    click.echo(f"wrote {out} ({len(rows)} row(s) x {n} images, {G.resolution} px, generator {G.name})")


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@user_errors
def info(file):
    """Print what a generator checkpoint, domain file or foreign checkpoint holds."""
    from hyperdomain.inspect_file import describe

    for key, value in describe(file).items():
        click.echo(f"{key:>22}: {value}")


@main.command(name="import")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Domain file to write (.safetensors).")
@click.option("--prompt", help="The target prompt it was trained for (the paper's files do not record it).")
@click.option("--source", "source_prompt", help="Source prompt (default: the generator's, e.g. 'Photo').")
@user_errors
def import_(checkpoint, out, prompt, source_prompt):
    """Convert one of the paper's released single-domain checkpoints into a domain file.

    \b
    Example:
      hyperdomain import td_pixar.pt --prompt "3D render in the style of Pixar" --out pixar.safetensors
    """
    import hyperdomain as hd

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
    """Download known generator weights (verified by sha256) into $HYPERDOMAIN_HOME.

    \b
    Examples:
      hyperdomain download ffhq
      hyperdomain download --list
    """
    from hyperdomain.weights import download as fetch, load_manifest, weights_home

    manifest = load_manifest()
    if list_ or not names:
        home = weights_home()
        for name, e in manifest.items():
            have = "downloaded" if (home / e.filename).is_file() else "-"
            click.echo(f"{name:<12} {e.resolution:>5} px  {e.format:<14} {have:<10} {e.description}")
        click.echo(f"weights folder: {home}")
        return
    for name in names:
        path = fetch(name)
        click.echo(f"{name}: {path}")


if __name__ == "__main__":  # pragma: no cover
    main()
