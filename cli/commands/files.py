"""`hyperdomain info`, `import` and `download`: what a file holds, the paper's checkpoints into
ours, and the known weights."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import UserError, user_errors
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
              help="Domain, hypernetwork or encoder file to write (.safetensors).")
@click.option("--prompt", help="The target prompt it was trained for (the paper's files do not record it).")
@click.option("--source", "source_prompt", help="Source prompt (default: the generator's, e.g. 'Photo').")
@click.option("--generator", "-g", help="An encoder release's generator (manifest name or file): its decoder must be "
                                        "this one [default: its decoder is the generator].")
@click.option("--generator-out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write an encoder release's decoder as a generator file (.safetensors).")
@overwrite_option
@user_errors
def import_(checkpoint, out, prompt, source_prompt, generator, generator_out, overwrite):
    """Convert a released checkpoint: one of the paper's domains (td_*.pt) or hypernetworks
    (mapper_*.pt), or an e4e / ReStyle encoder (e4e_ffhq_encode.pt, restyle_*_ffhq_encode.pt).

    \b
    Example:
      hyperdomain import td_pixar.pt --prompt "3D render in the style of Pixar" --out pixar.safetensors
      hyperdomain import mapper_large_resample_td.pt --out hdn.safetensors
      hyperdomain import e4e_ffhq_encode.pt -g ffhq --out e4e.safetensors
    """
    import hyperdomain as hd
    from hyperdomain.files.kinds import DOMAIN_KIND, ENCODER_KIND, GENERATOR_KIND, HYPERNET_KIND

    kind = _checkpoint_kind(checkpoint)
    if kind == "encoder":
        outputs = [("--out", out, ENCODER_KIND)] + ([("--generator-out", generator_out, GENERATOR_KIND)]
                                                    if generator_out is not None else [])
        check_outputs(outputs, [checkpoint, generator], overwrite)
        G = hd.load_generator(generator) if generator is not None else None
        enc, G = hd.import_encoder(checkpoint, G, out=out, generator_out=generator_out)
        c = enc.config
        click.echo(f"wrote {out} ({c.kind}, W+ [{c.n_styles}, 512], {c.n_iters} pass{'es' * (c.n_iters > 1)}, for "
                   f"generator {G.fingerprint})" + (f" and {generator_out}" if generator_out is not None else ""))
        return
    if generator is not None or generator_out is not None:
        raise UserError(f"{'--generator' if generator is not None else '--generator-out'} is for encoder releases "
                        f"(e4e, ReStyle); {checkpoint} is not one")
    mapper = kind == "mapper"  # a HyperDomainNet: written as a hypernetwork file
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


def _checkpoint_kind(path: Path) -> str | None:
    """``"encoder"`` for an e4e / ReStyle release, else the paper's ``model_type`` ("mapper", ...) or None."""
    from collections.abc import Mapping

    from hyperdomain.files.restricted_unpickler import load_torch_file_omegaconf
    from hyperdomain.image.encoders.official import is_release

    obj = load_torch_file_omegaconf(path)
    if is_release(obj):
        return "encoder"
    return str(obj.get("model_type")) if isinstance(obj, Mapping) and "model_type" in obj else None


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
