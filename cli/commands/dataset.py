"""`hyperdomain dataset`: a generator and its domains as a sharded image dataset (thin: the library
does the work, this parses, checks the user's values and reports)."""
from __future__ import annotations

import signal
from pathlib import Path

import click

from ..options import SEED, FiniteFloat, LibraryDefault


def make_function():
    from hyperdomain import make_dataset

    return make_dataset


EXAMPLES = """
\b
Examples:
  hyperdomain dataset -g ffhq -d pixar.safetensors -d anime.safetensors -n 100000 --size 256 --out data/faces
  hyperdomain dataset -g ffhq --hyper hdn.safetensors --prompts builtin:heldout -n 10000 --views 2 --out data/views
  torchrun --nnodes 4 --nproc_per_node 8 ... -m cli.main dataset ...   # rank r writes shards r, r+W, ...
  hyperdomain dataset --out data/faces --verify                        # check a finished dataset
"""


def check_numbers(*, n: int, views: int, shard_size: int, batch: int, size: int | None, quality: int,
                  sigma: float) -> None:
    """Every number in the library's bounds, before a model is loaded or a file written: one line naming the option."""
    from hyperdomain.datasets import settings as s

    for option, value, low, high in (("--num", n, 1, s.MAX_N), ("--views", views, 0, s.MAX_VIEWS),
                                     ("--shard-size", shard_size, 1, s.MAX_SHARD_SIZE),
                                     ("--batch", batch, 1, s.MAX_BATCH), ("--size", size, 1, s.MAX_RESOLUTION),
                                     ("--quality", quality, 1, 100)):
        problem = s.range_problem(value, low, high) if value is not None else None
        if problem:
            raise UserError(f"{option}: expected {problem}")
    problem = s.range_problem(sigma, 0.0, s.MAX_SIGMA, integer=False)
    if problem:
        raise UserError(f"--sigma: expected {problem} (the views' spread around their latent)")
    per_sample = 1 + views  # the domains are not known yet: the library checks the shard again with them
    problem = s.shard_images_problem(n, shard_size, per_sample)
    if problem:
        raise UserError(f"--shard-size {shard_size} with --views {views}: {problem}")
from ..errors import UserError, user_errors
from ..loading import check_domain_source, load_domains, load_hyper, resolve_device
from ..options import device_option, domain_source_options, generator_option, progress_option


@click.command(epilog=EXAMPLES)
@generator_option
@domain_source_options(domains="A domain file; repeatable (named by the file's stem).",
                       no_check="Allow domains or a hypernetwork made for another fingerprint.")
@click.option("--prompts", "prompt_list", help="A domain list for --hyper (one prompt a line, or builtin:heldout).")
@click.option("-n", "--num", "n", type=int, help="Latent indices 0..N-1 (samples).")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Dataset folder (new, empty, or one of the same settings to resume).")
@click.option("--seed", cls=LibraryDefault, owner=make_function, type=SEED)
@click.option("--truncation", cls=LibraryDefault, owner=make_function, type=FiniteFloat(0.0, 2.0))
@click.option("--views", cls=LibraryDefault, owner=make_function, type=int,
              help="Latent neighbours z + sigma * noise per index (see --views-in), at most 1000.")
@click.option("--sigma", cls=LibraryDefault, owner=make_function, type=FiniteFloat(0.0),
              help="The views' spread, at most 10.")
@click.option("--views-in", cls=LibraryDefault, owner=make_function, type=click.Choice(["source", "all"]),
              help="Render the views in the source only, or in the source and every domain (positives "
                   "inside a domain; view k has one latent in all).")
@click.option("--size", type=int,
              help="Downscale to this many pixels a side (antialiased) [default: the generator's].")
@click.option("--format", "fmt", cls=LibraryDefault, owner=make_function, field="format",
              type=click.Choice(["png", "jpg", "webp"]))
@click.option("--quality", cls=LibraryDefault, owner=make_function, type=int, help="jpg/webp quality, 1-100.")
@click.option("--layout", cls=LibraryDefault, owner=make_function, type=click.Choice(["webdataset", "folder"]),
              help="webdataset: tar shards; folder: one folder a domain (an ImageFolder class), source/ and "
                   "<domain>/, their views in view<k>/ inside them.")
@click.option("--shard-size", cls=LibraryDefault, owner=make_function, type=int, help="Samples per shard.")
@click.option("--batch", cls=LibraryDefault, owner=make_function, type=int,
              help="Images per step, in passes of 8 (speed and memory only: the bytes never depend on it, "
                   "and a resume may change it).")
@click.option("--verify", is_flag=True,
              help="Re-read the dataset and check it against its index (without -n: only that).")
@progress_option
@device_option
@click.pass_context
@user_errors
def dataset(ctx, generator, domains, hyper, prompts, prompt_list, hyper_clip, n, out, seed, truncation, views,
            sigma, views_in, size, fmt, quality, layout, shard_size, batch, verify, no_check, progress, device):
    """Write a dataset: each latent index in the source and in every domain (paired), with views."""
    import hyperdomain as hd
    from hyperdomain import distributed

    if n is None:
        if not verify:
            raise UserError("-n/--num is required: how many latent indices (samples) to write")
        index = hd.verify_dataset(out)
        click.echo(f"{out}: verified {index['samples']} samples, {index['images']} images in "
                   f"{len(index['shards'])} shards")
        return
    check_numbers(n=n, views=views, shard_size=shard_size, batch=batch, size=size, quality=quality,
                  sigma=sigma)
    check_domain_source(domains, hyper, prompts, prompt_list=prompt_list, lists=True)
    if device != "auto":
        resolve_device(device)
    dist = distributed.setup(device)
    try:
        G = hd.load_generator(generator, device=dist.device)
        if size is not None and size > G.resolution:
            raise UserError(f"--size {size}: images are only downscaled; generator {G.name} makes "
                                f"{G.resolution} px")
        named = list(zip([p.stem for p in domains], load_domains(G, domains, no_check=no_check)))
        if hyper is not None:
            from hyperdomain.guidance.domain_lists import read_domain_list

            words = list(prompts) + ([d.target for d in read_domain_list(prompt_list, G.source_prompt)]
                                     if prompt_list else [])
            net = load_hyper(hyper, G, no_check, hyper_clip)
            named += list(zip(words, net.domains(words)))
        try:
            index = hd.make_dataset(G, out, n, named, seed=seed, truncation=truncation, views=views,
                                    sigma=sigma, views_in=views_in, size=size, format=fmt, quality=quality,
                                    layout=layout, shard_size=shard_size, batch=batch, check=not no_check,
                                    dist=dist, progress=progress)
        except KeyboardInterrupt as stop:
            signum = getattr(stop, "signum", signal.SIGINT)
            if dist.is_main:
                what = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
                click.echo(f"{what}; the complete shards in {out} are kept; run the same command again to "
                           f"resume", err=True)
            ctx.exit(128 + int(signum))
        if verify and dist.is_main:
            hd.verify_dataset(out)
        if dist.is_main:
            click.echo(f"wrote {out}: {index['samples']} samples, {index['images']} images in "
                       f"{len(index['shards'])} shards ({layout}, {index['settings']['size']} px {fmt})"
                       + (", verified" if verify else ""))
    finally:
        distributed.teardown(dist)

