"""`hyperdomain serve`: the local web app (thin: ``hyperdomain.webapp`` does the work).

Built by :func:`build` from the command group's module (its shared options and error handling),
as the animate command is.
"""
from __future__ import annotations

from pathlib import Path
from types import ModuleType

import click

EXAMPLES = """
\b
Examples:
  hyperdomain serve                                        # FFHQ, http://127.0.0.1:7860
  hyperdomain serve -g ffhq --hyper hdn.safetensors -d pixar.safetensors -d anime.safetensors
  hyperdomain serve -g tiny.pt --clip tiny_clip.json --device cpu --port 8080
"""


def listen_address(ctx, param, host: str) -> str:
    """--host checked where it is parsed: an IPv4 address (four numbers 0-255) or a host name that
    resolves, and one this machine can listen on; else one line saying so, not the server's "choose
    another --port" (or a traceback, for IPv6) after the models load."""
    import ipaddress
    import socket

    hint = "use an address of this machine, e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
    try:
        if ipaddress.ip_address(host).version == 6:  # Gradio builds its URL as host:port, which breaks on one
            raise click.BadParameter(f"{host!r}: the app listens on IPv4 addresses only; {hint}")
    except ValueError:
        if not host or host.replace(".", "").isdigit() or ":" in host:  # meant as an address: not a valid one
            raise click.BadParameter(f"{host!r} is not a valid IP address; {hint}") from None
        try:
            socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as e:
            raise click.BadParameter(f"{host!r} is not a valid address (no such host name: {e}); {hint}") from None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.bind(address)  # port 0: any free port; only the address is tried
    except OSError as e:
        raise click.BadParameter(f"cannot listen on {host!r} ({e.strerror or e}); {hint}") from None
    return host


def build(cli: ModuleType) -> click.Command:
    @click.command(name="serve", epilog=EXAMPLES)
    @cli.generator_option
    @click.option("--domain", "-d", "domains", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
                  help="A domain file to explore; repeatable (more can be added in the page).")
    @click.option("--hyper", type=click.Path(dir_okay=False, path_type=Path),
                  help="A hypernetwork file: the page turns typed prompts into domains.")
    @click.option("--hyper-clip", metavar="SPEC", help="The hypernetwork's prompt encoder [default: its own].")
    @click.option("--clip", "clip", multiple=True, metavar="SPEC",
                  help="CLIP model(s) for runs started in the page [default: ViT-B/32 + ViT-B/16].")
    @cli.photo_options
    @click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("hyperdomain-app"),
                  show_default=True, help="Where the page's runs, downloads and photos are written.")
    @click.option("--host", default="127.0.0.1", show_default=True, callback=listen_address,
                  help="The address to listen on (0.0.0.0: every interface; anyone who reaches it can use the app).")
    @click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
    @click.option("--no-check", is_flag=True, help="Accept domains made for a generator with another fingerprint.")
    @cli.device_option
    @cli.user_errors
    def serve(generator, domains, hyper, hyper_clip, clip, align, detector, detector_weights, lpips_vgg, steps, lr,
              pca_samples, work_dir, host, port, no_check, device):
        """A local web app: explore domains and prompts, adapt in the background, put photos in domains.

        Needs the extra: pip install 'hyperdomain[ui]'. Gradio's analytics are off; Ctrl-C stops it.
        """
        import os

        # The page's requests run on a pool of server threads, each with its own OpenMP team; teams
        # that spin while idle (the default) take the cores from the one rendering. torch reads
        # this when it loads, which no command has done yet.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        from hyperdomain.webapp.server import is_loopback, require_gradio

        require_gradio()  # one line before any model loads
        import hyperdomain as hd
        from hyperdomain.webapp import load_models, server

        def det():  # made when a photo is first aligned (--align, or a face generator by default)
            from hyperdomain.face_detectors import detector as face_detector

            return face_detector(detector, detector_weights)

        models = load_models(
            generator, list(domains), hyper=hyper, hyper_clip=cli.absolute_spec(hyper_clip) if hyper_clip else None,
            clip=[cli.absolute_spec(c) for c in clip] or None,
            lpips_backbone=cli.absolute_path(lpips_vgg) if lpips_vgg is not None else "imagenet", align=align,
            detector=None if align is False else det, inversion=hd.InversionConfig(steps=steps, lr=lr, pca_samples=pca_samples),
            work_dir=work_dir.resolve(), device=cli.resolve_device(device), check=not no_check)
        if not is_loopback(host):
            click.echo(f"warning: listening on {host}: anyone who can reach this machine can use the app and "
                       f"start runs on it", err=True)
        running = server.start(models, host, port, block=False)
        click.echo(f"hyperdomain app on {running.url} (generator {models.G.name}, {len(models.domains)} domain(s)"
                   f"{', a hypernetwork' if models.hyper is not None else ''}); files in {work_dir}; Ctrl-C stops it")
        running.block()  # Ctrl-C or SIGTERM: a run in progress stops at its next step and saves
        click.echo("stopped", err=True)

    return serve
