"""`hyperdomain evaluate`: the paper's CLIP quality and diversity of domains and prompts."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import UserError, user_errors
from ..loading import absolute_spec, check_domain_source, load_domains, load_hyper, resolve_device
from ..options import (SEED, FiniteFloat, LibraryChoice, LibraryDefault, device_option, domain_source_options,
                       evaluate_function, generator_option, photo_options, template_sets)
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
@click.option("--translator", type=click.Path(dir_okay=False, path_type=Path),
              help="Score a translator file into its --domain instead: LPIPS/PSNR to the truth on held-out "
                   "generated sources, and on --photos CLIP direction alignment and LPIPS to the input.")
@click.option("--photos", "photos_dir", type=click.Path(file_okay=False, path_type=Path),
              help="With --translator: a folder of real photos to translate.")
@click.option("--compare-inversion", is_flag=True,
              help="With --translator and --photos: the same figures for inversion + render (slow: --steps).")
@photo_options
@overwrite_option
@device_option
@user_errors
def evaluate(generator, domains, hyper, prompts, prompt_list, with_source, clip, hyper_clip, n, seed, truncation,
             templates, batch_size, outs, no_check, overwrite, device, translator, photos_dir, compare_inversion,
             align, detector, detector_weights, lpips_vgg, steps, lr, pca_samples):
    """Score domains by CLIP quality (cosine to the prompt) and diversity (pairwise distance);
    with --translator, a translator against the truth and against inversion.

    \b
    Examples:
      hyperdomain evaluate --domain runs/pixar/domain.safetensors --source -o scores.json
      hyperdomain evaluate --hyper runs/hyper/hypernet.safetensors --prompts builtin:heldout -n 100 -o held.csv
      hyperdomain evaluate --translator runs/t/translator.safetensors --domain pixar.safetensors --photos me/ \\
          --compare-inversion --steps 200 -n 64
    """
    import hyperdomain as hd
    from hyperdomain.guidance.evaluation import format_table, write_results
    from hyperdomain.files.kinds import RESULTS

    for o in outs:
        if o.suffix.lower() not in (".json", ".csv"):
            raise UserError(f"--out {o}: results go to a .json or .csv file")
    check_outputs([("--out", o, RESULTS) for o in outs],
                  [*domains, hyper, prompt_list, generator, spec_file(clip), spec_file(hyper_clip), translator], overwrite)
    if translator is not None or photos_dir is not None or compare_inversion:
        return _evaluate_translator(generator, domains, hyper, with_source, prompt_list, clip, n, seed, truncation,
                                    templates, batch_size, outs, no_check, device, translator, photos_dir,
                                    compare_inversion, (align, detector, detector_weights, lpips_vgg, steps, lr,
                                                        pca_samples))
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


def _evaluate_translator(generator, domains, hyper, with_source, prompt_list, clip, n, seed, truncation, templates,
                         batch_size, outs, no_check, device, translator, photos_dir, compare_inversion, photo_settings):
    import hyperdomain as hd
    from hyperdomain.guidance.clip import load_clip, templates as template_set
    from hyperdomain.image.translators import load_translator
    from hyperdomain.image.translators.evaluation import format_translator_table, translator_metrics, write_rows

    if translator is None:
        raise UserError("--photos and --compare-inversion score a translator: give --translator FILE")
    if hyper is not None or with_source or prompt_list:
        raise UserError("--translator is scored into one --domain; drop --hyper, --prompts and --source")
    if len(domains) != 1:
        raise UserError(f"--translator needs the domain it translates into: exactly one --domain, got {len(domains)}")
    if compare_inversion and photos_dir is None:
        raise UserError("--compare-inversion inverts real photos: give --photos DIR")
    if photos_dir is not None:
        from hyperdomain.image.translators.ot_data import photo_files

        photo_files(photos_dir)  # one line for a missing or empty folder, before anything loads
    G = hd.load_generator(generator, device=resolve_device(device))
    domain = load_domains(G, domains, no_check=no_check)[0]
    t = load_translator(translator, generator=G, device=G.device, check=not no_check)
    align, detector, detector_weights, lpips_vgg, steps, lr, pca_samples = photo_settings
    from ..loading import inversion_tools

    aligning, det, lpips, inversion = inversion_tools(G, align, detector, detector_weights, lpips_vgg, steps, lr,
                                                      pca_samples)
    photos = None
    if photos_dir is not None:
        from hyperdomain.image.translators.ot_data import load_photos

        photos = load_photos(G, photos_dir, G.resolution, align=aligning, detector=det).float() / 127.5 - 1
    encoder = load_clip([absolute_spec(clip)], device=G.device)[0]
    rows = translator_metrics(G, t, domain.vector.to(G.device), encoder, lpips, photos=photos,
                              prompt=domain.meta.get("prompt"), source_prompt=domain.meta.get("source_prompt"),
                              template_set=template_set(templates), n=n, seed=seed, truncation=truncation,
                              batch_size=batch_size, compare_inversion=inversion if compare_inversion else None)
    click.echo(format_translator_table(rows))
    for o in outs:
        write_rows(rows, o)
        click.echo(f"wrote {o}")
