"""`hyperdomain serve`: the local web app (thin: ``hyperdomain.webapp`` does the work)."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import user_errors
from ..loading import absolute_path, absolute_spec, resolve_device
from ..options import (FiniteFloat, LibraryDefault, device_option, domain_source_options, encoder_options,
                       generator_option, photo_options)


def _start():
    from hyperdomain.webapp.server import start

    return start


EXAMPLES = """
\b
Examples:
  hyperdomain serve                                        # FFHQ, http://127.0.0.1:7860
  hyperdomain serve -g ffhq --hyper hdn.safetensors -d pixar.safetensors -d anime.safetensors
  hyperdomain serve -g tiny.pt --clip tiny_clip.json --device cpu --port 8080
  hyperdomain serve --host 0.0.0.0 --auth-file users.txt     # shared on the network, with passwords
  hyperdomain serve --allow-host hd.example.org               # behind a reverse proxy of that name
"""


def listen_address(ctx, param, host: str) -> str:
    """--host checked where it is parsed (:func:`hyperdomain.webapp.access.check_bind_host`), not by the
    server's "choose another --port" (or a traceback, for IPv6) after the models load."""
    from hyperdomain.errors import HyperdomainError
    from hyperdomain.webapp.access import check_bind_host

    try:
        return check_bind_host(host)
    except HyperdomainError as e:
        raise click.BadParameter(str(e)) from None
@click.command(name="serve", epilog=EXAMPLES)
@generator_option
@domain_source_options(domains="A domain file to explore; repeatable (more can be added in the page).", prompts=False,
                       no_check="Accept domains made for a generator with another fingerprint.")
@click.option("--clip", "clip", multiple=True, metavar="SPEC",
              help="CLIP model(s) for runs started in the page [default: ViT-B/32 + ViT-B/16].")
@photo_options
@encoder_options
@click.option("--translator", "translators", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A translator file (hyperdomain translator train) offered in the Photo panel; repeatable.")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("hyperdomain-app"),
              show_default=True, help="Where the page's runs, uploads and downloads are written: a new or "
              "empty folder, or one an earlier serve made (only its downloads/ is served).")
@click.option("--host", default="127.0.0.1", show_default=True, callback=listen_address,
              help="The address to listen on (0.0.0.0: every interface; anyone who reaches it can use the app: "
              "add --auth).")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="Also answer requests addressed to NAME (a reverse proxy's public name); repeatable. Others "
              "are refused (DNS rebinding).")
@click.option("--auth", "auth", multiple=True, metavar="USER:PASS",
              help="Ask for a user name and password (repeatable); see also --auth-file.")
@click.option("--auth-file", "auth_files", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A file of USER:PASS lines (keeps passwords out of the shell's history).")
@click.option("--max-upload-mb", cls=LibraryDefault, owner=_start, type=FiniteFloat(0, 1e6, min_open=True),
              help="The largest upload the server accepts, in megabytes.")
@device_option
@user_errors
def serve(generator, domains, hyper, hyper_clip, clip, align, detector, detector_weights, lpips_vgg, steps, lr,
          pca_samples, encoder, restyle_steps, refine, translators, work_dir, host, port, allow_hosts, auth, auth_files, max_upload_mb, no_check, device):
    """A local web app: explore domains and prompts, adapt in the background, put photos in domains.

    Needs the extra: pip install 'hyperdomain[ui]'. Gradio's analytics are off; Ctrl-C stops it.
    """
    import os

    # The page's requests run on a pool of server threads, each with its own OpenMP team; teams
    # that spin while idle (the default) take the cores from the one rendering. torch reads
    # this when it loads, which no command has done yet.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from hyperdomain.webapp.access import check_work_dir, is_loopback, parse_auth
    from hyperdomain.webapp.server import require_gradio

    require_gradio()  # one line each, before any model loads
    users = parse_auth(auth, auth_files)
    work_dir = check_work_dir(work_dir)
    import hyperdomain as hd
    from hyperdomain.webapp import load_models, server

    def det():  # made when a photo is first aligned (--align, or a face generator by default)
        from hyperdomain.image.face_detectors import detector as face_detector

        return face_detector(detector, detector_weights)

    models = load_models(
        generator, list(domains), hyper=hyper, hyper_clip=absolute_spec(hyper_clip) if hyper_clip else None,
        clip=[absolute_spec(c) for c in clip] or None,
        lpips_backbone=absolute_path(lpips_vgg) if lpips_vgg is not None else "imagenet", align=align,
        detector=None if align is False else det,
        inversion=hd.InversionConfig(steps=steps, lr=lr, pca_samples=pca_samples),
        encoder=encoder if encoder in ("auto", "ii2s") else absolute_path(encoder), restyle_steps=restyle_steps,
        refine=refine, translators=list(translators), work_dir=work_dir.resolve(), device=resolve_device(device), check=not no_check)
    if not is_loopback(host) and not users:
        click.echo(f"warning: listening on {host} without --auth: anyone who can reach this machine can use "
                   f"the app, start runs on it and download what it made", err=True)
    running = server.start(models, host, port, block=False, allow_hosts=allow_hosts, auth=users,
                           max_upload_mb=max_upload_mb)
    click.echo(f"hyperdomain app on {running.url} (generator {models.G.name}, {len(models.domains)} domain(s)"
               f"{', a hypernetwork' if models.hyper is not None else ''}"
               f"{', photos through ' + models.encoder.config.kind if models.encoder is not None else ''}"
               f"{', ' + str(len(models.translators)) + ' translator(s)' if models.translators else ''}); files in {work_dir}"
               f"{'; passwords asked' if users else ''}; Ctrl-C stops it")
    running.block()  # Ctrl-C or SIGTERM: a run in progress stops at its next step and saves
    click.echo("stopped", err=True)

