"""`hyperdomain train-hyper` (a HyperDomainNet on many prompts, one process or many under
torchrun) and `export` (one prompt of it frozen into a domain file)."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import interrupted, user_errors
from ..loading import absolute_path, absolute_spec, check_run_folder, resolve_device, resumed_generator
from ..options import (LEARNING_RATE, SEED, FiniteFloat, LibraryChoice, LibraryDefault, LossOption, device_option,
                       generator_option, hyper_clip_option, hyper_config, log_option, option_group, progress_option, resume_option,
                       template_sets)
from ..outputs import check_outputs, overwrite_option, spec_file

# where the run's models are and how it runs, not what it is: what a resume may still be told
where = option_group(
    generator_option,
    click.option("--clip", "clip", cls=LibraryDefault, owner=hyper_config, fallback=True, fallback_help="",
                 multiple=True, metavar="NAME[:TAG][=FILE]", help="CLIP model(s) of the losses, repeatable."),
    click.option("--input-clip", cls=LibraryDefault, owner=hyper_config, metavar="NAME[:TAG][=FILE]",
                 help="The CLIP model whose bare-prompt embedding is the network's input."),
    progress_option,
    device_option,
)

EXAMPLES = """
\b
Examples:
  hyperdomain train-hyper                                   # the shipped 464 prompts, FFHQ, paper defaults
  hyperdomain train-hyper --domains my_domains.txt --test-domains held_out.txt --iters 20000 --out runs/hdn
  torchrun --nproc_per_node 4 -m cli.main train-hyper --batch 32   # DDP, the global batch split over 4 GPUs
  hyperdomain train-hyper --resume runs/hyper               # after Ctrl-C; works with another process count
"""


@click.command(name="train-hyper", epilog=EXAMPLES)
@click.option("--domains", cls=LibraryDefault, owner=hyper_config,
              help="Domain list: one 'Target - Source' per line (source optional), or builtin:train.")
@click.option("--test-domains", cls=LibraryDefault, owner=hyper_config,
              help="Held-out prompts shown in the sample grids; 'none' for none.")
@click.option("--iters", cls=LibraryDefault, owner=hyper_config, type=click.IntRange(1), help="Training steps.")
@click.option("--batch", cls=LibraryDefault, owner=hyper_config, type=click.IntRange(2),
              help="Global batch (all processes).")
@click.option("--lr", cls=LibraryDefault, owner=hyper_config, type=LEARNING_RATE)
@click.option("--loss", "losses", cls=LossOption, run="hyper", owner=hyper_config, fallback=True, fallback_help="")
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
@resume_option
@log_option
@where
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
            generator = resumed_generator(ctx, hd.read_hyper_config(resume), generator, ("resume", "iters", *where.names))
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


@click.command()
@click.option("--hyper", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Hypernetwork file.")
@click.option("--prompt", "-p", required=True, help="The domain, in words.")
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Domain file to write (.safetensors).")
@hyper_clip_option
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
