"""`hyperdomain invert` and `stylize`: a person's photos into the generator, and out in domains.

Each photo is read once, before any model loads (a bad one is named in seconds), checked for the
generator's size once it is loaded, and handed to the library as it was read."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import UserError, user_errors
from ..loading import (check_domain_source, check_photos, inversion_tools, load_domains, photo_encoder, photo_paths,
                       resolve_device)
from ..options import (LibraryDefault, device_option, domain_source_options, encoder_options, generator_option,
                       photo_options, progress_option)
from ..outputs import check_outputs, overwrite_option, spec_file, unique_names, unique_stems


def invert_function():
    from hyperdomain import invert

    return invert


batch_option = click.option("--batch", cls=LibraryDefault, owner=invert_function, type=click.IntRange(1),
                            help="Photos an encoder takes at a time.")

@click.command()
@click.argument("photos", nargs=-1, required=True, type=click.Path(path_type=Path))
@generator_option
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for each photo's latent (NAME.safetensors) and reconstruction (NAME.png).")
@encoder_options
@batch_option
@photo_options
@click.option("--no-check", is_flag=True, help="Use an encoder made for a generator with another fingerprint.")
@progress_option
@overwrite_option
@device_option
@user_errors
def invert(photos, generator, out, encoder, restyle_steps, refine, batch, align, detector, detector_weights, lpips_vgg,
           steps, lr, pca_samples, no_check, progress, overwrite, device):
    """Put photos (or folders of them) into the generator: one W+ latent per photo, from an encoder
    (e4e, ReStyle) or the paper's II2S optimisation.

    \b
    Example:
      hyperdomain invert me.jpg friend.png --out latents/
      hyperdomain invert photos/ --encoder e4e --refine 100 --out latents/
      hyperdomain stylize --latent latents/me.safetensors --domain pixar.safetensors --out styled/
    """
    import hyperdomain as hd
    from hyperdomain.files.kinds import IMAGE, LATENT_KIND

    photos = photo_paths(photos)
    names = unique_stems(photos)
    check_outputs([("--out", out / f"{n}.safetensors", LATENT_KIND) for n in names]
                  + [("--out", out / f"{n}.png", IMAGE) for n in names],
                  [*photos, generator, detector_weights, lpips_vgg, encoder], overwrite)
    read = check_photos(photos)
    G = hd.load_generator(generator, device=resolve_device(device))
    check_photos(read, G)
    enc, method = photo_encoder(G, encoder, restyle_steps, refine, steps, no_check)
    aligning, det, lpips, config = inversion_tools(G, align, detector, detector_weights, lpips_vgg, steps, lr,
                                                   pca_samples)
    latents = hd.invert(G, read, config, encoder=enc, restyle_steps=restyle_steps, refine=refine, batch=batch,
                        check=not no_check, align=aligning, detector=det, lpips=lpips, progress=progress)
    click.echo(method, err=True)
    import torch

    for name, photo, latent in zip(names, photos, latents):
        latent.save(out / f"{name}.safetensors")
        with torch.no_grad():
            recon = G.synthesis(latent.ws[None].to(G.device), noise_mode=latent.meta.get("inversion", {}).get(
                "noise_mode", "const"))
        hd.save_grid(recon, out / f"{name}.png", padding=0)
        click.echo(f"{photo}: PSNR {latent.meta['psnr']:.2f} dB, LPIPS {latent.meta['lpips']:.4f} -> "
                   f"{out / (name + '.safetensors')} and {out / (name + '.png')}")


@click.command()
@click.argument("photos", nargs=-1, type=click.Path(path_type=Path))
@click.option("--latent", "latents", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A latent file from hyperdomain invert, instead of inverting a photo again; repeatable.")
@generator_option
@domain_source_options(domains="A domain file; repeatable (one column each).",
                       no_check="Use domains, latents or an encoder made for a generator with another "
                                "fingerprint.")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for one grid per photo (NAME.png: the photo, its reconstruction, each domain) and "
                   "its latent (NAME.safetensors).")
@click.option("--separate", type=click.Path(file_okay=False, path_type=Path),
              help="Also write every image on its own (NAME_photo.png, NAME_reconstruction.png, NAME_DOMAIN.png).")
@encoder_options
@batch_option
@photo_options
@progress_option
@overwrite_option
@device_option
@user_errors
def stylize(photos, latents, generator, domains, hyper, prompts, hyper_clip, no_check, out, separate, encoder,
            restyle_steps, refine, batch, align, detector, detector_weights, lpips_vgg, steps, lr, pca_samples,
            progress, overwrite, device):
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
    photos = photo_paths(photos)
    check_domain_source(domains, hyper, prompts, required=True)
    names = unique_stems(list(photos) + list(latents))
    columns = unique_names(["photo", "reconstruction"] + [p.stem for p in domains] + [slug(q) for q in prompts])
    outputs = [("--out", out / f"{n}.png", IMAGE) for n in names]
    outputs += [("--out", out / f"{n}.safetensors", LATENT_KIND) for n in names[:len(photos)]]
    if separate is not None:
        outputs += [("--separate", separate / f"{n}_{c}.png", IMAGE) for n in names for c in columns]
    check_outputs(outputs, [*photos, *latents, *domains, hyper, generator, spec_file(hyper_clip), detector_weights,
                            lpips_vgg, encoder], overwrite)
    read = check_photos(photos)
    G = hd.load_generator(generator, device=resolve_device(device))
    check_photos(read, G)
    loaded = load_domains(G, domains, hyper, prompts, hyper_clip, no_check)
    lat = [hd.Latent.load(p, generator=G, check=not no_check) for p in latents]
    enc, method = (photo_encoder(G, encoder, restyle_steps, refine, steps, no_check, "stylize") if photos
                   else (None, ""))
    aligning, det, lpips, config = (inversion_tools(G, align, detector, detector_weights, lpips_vgg, steps, lr,
                                                    pca_samples) if photos else (False, None, None, None))
    rows = hd.stylize(G, read, loaded, latents=lat, config=config, encoder=enc, restyle_steps=restyle_steps,
                      refine=refine, batch=batch, check=not no_check, align=aligning, detector=det, lpips=lpips,
                      progress=progress)
    if method:
        click.echo(method, err=True)
    for i, (name, row) in enumerate(zip(names, rows)):
        hd.save_grid(row.row(), out / f"{name}.png", nrow=len(loaded) + 2)
        if i < len(photos):  # a new inversion: kept for later runs (--latent)
            row.latent.save(out / f"{name}.safetensors")
        if separate is not None:
            for label, img in zip(columns, row.row()):
                hd.save_grid(img[None], separate / f"{name}_{label}.png", padding=0)
        click.echo(f"{out / (name + '.png')}: photo, reconstruction, {', '.join(columns[2:])}")
