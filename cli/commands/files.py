"""`hyperdomain info`, `import` and `download`: what a file holds, the paper's checkpoints into
ours, and the known weights."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import user_errors
from ..outputs import check_outputs, overwrite_option


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
@user_errors
def info(file):
    """Print what a generator checkpoint, domain file or foreign checkpoint holds."""
    from hyperdomain.model.describe import describe

    for key, value in describe(file).items():
        click.echo(f"{key:>22}: {value}")


@click.command(name="import")
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


@click.command()
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
