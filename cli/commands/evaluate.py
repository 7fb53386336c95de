"""`hyperdomain evaluate`: the paper's CLIP quality and diversity of domains and prompts."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import UserError, user_errors
from ..loading import absolute_spec, check_domain_source, load_domains, load_hyper, resolve_device
from ..options import (SEED, FiniteFloat, LibraryChoice, LibraryDefault, device_option, domain_source_options,
                       evaluate_function, generator_option, template_sets)
from ..outputs import check_outputs, overwrite_option, spec_file


@click.command()
@generator_option
@domain_source_options(domains="Domain file to score against its own prompt; repeatable.",
                       no_check="Allow domains or a hypernetwork made for another fingerprint.")
@click.option("--prompts", "prompt_list", help="A domain list of prompts for --hyper (e.g. builtin:heldout).")
@click.option("--source", "with_source", is_flag=True, help="Also score the unadapted generator (the baseline).")
@click.option("--clip", cls=LibraryDefault, owner=evaluate_function, metavar="NAME[:TAG][=FILE]",
              help="The judging CLIP model; prefer one not used in training.")
@click.option("-n", "--num", "n", cls=LibraryDefault, owner=evaluate_function, type=click.IntRange(2))
@click.option("--seed", cls=LibraryDefault, owner=evaluate_function, type=SEED)
@click.option("--truncation", cls=LibraryDefault, owner=evaluate_function, type=FiniteFloat(0.0, 2.0))
@click.option("--templates", cls=LibraryDefault, owner=evaluate_function, field="template_set",
              type=LibraryChoice(template_sets))
@click.option("--batch-size", cls=LibraryDefault, owner=evaluate_function, type=click.IntRange(1, 1024))
@click.option("--out", "-o", "outs", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Write the rows to .json and/or .csv; repeatable.")
@overwrite_option
@device_option
@user_errors
def evaluate(generator, domains, hyper, prompts, prompt_list, with_source, clip, hyper_clip, n, seed, truncation,
             templates, batch_size, outs, no_check, overwrite, device):
    """Score domains by CLIP quality (cosine to the prompt) and diversity (pairwise distance).

    \b
    Examples:
      hyperdomain evaluate --domain runs/pixar/domain.safetensors --source -o scores.json
      hyperdomain evaluate --hyper runs/hyper/hypernet.safetensors --prompts builtin:heldout -n 100 -o held.csv
    """
    import hyperdomain as hd
    from hyperdomain.guidance.evaluation import format_table, write_results
    from hyperdomain.files.kinds import RESULTS

    for o in outs:
        if o.suffix.lower() not in (".json", ".csv"):
            raise UserError(f"--out {o}: results go to a .json or .csv file")
    check_outputs([("--out", o, RESULTS) for o in outs],
                  [*domains, hyper, prompt_list, generator, spec_file(clip), spec_file(hyper_clip)], overwrite)
    check_domain_source(domains, hyper, prompts, prompt_list=prompt_list, lists=True)
    G = hd.load_generator(generator, device=resolve_device(device))
    loaded = load_domains(G, domains, no_check=no_check)
    net = load_hyper(hyper, G, no_check, hyper_clip) if hyper is not None else None
    all_prompts = list(prompts)
    if prompt_list:
        from hyperdomain.guidance.domain_lists import read_domain_list

        all_prompts += [d.target for d in read_domain_list(prompt_list, G.source_prompt)]
    rows = hd.evaluate(G, loaded, hypernet=net, prompts=all_prompts, source=with_source, clip=absolute_spec(clip),
                       n=n, seed=seed, truncation=truncation, template_set=templates, batch_size=batch_size)
    click.echo(format_table(rows))
    for o in outs:
        write_results(rows, o)
        click.echo(f"wrote {o}")
