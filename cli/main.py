"""`hyperdomain`: the command group. Thin: each command (``cli/commands/``) parses its options,
checks what it will read and write, calls the library and reports."""
from __future__ import annotations

import logging
import os
import sys

import click

from .commands.adapt import adapt
from .commands.animate import animate
from .commands.dataset import dataset
from .commands.encoder import train_encoder
from .commands.evaluate import evaluate
from .commands.files import download, import_, info
from .commands.hyper import export, train_hyper
from .commands.photos import invert, stylize
from .commands.sample import sample
from .commands.serve import serve
from .commands.translator import translate, translator
from .errors import OneLineErrors


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="hyperdomain")
def main(verbose: int) -> None:
    """hyperdomain: adapt a frozen StyleGAN2 to new domains with a ~6k-number domain vector."""
    # Large CPU tensors on transparent huge pages: the generator's passes run about 25% faster on
    # CPU (benchmarks/README.md), on GPUs it changes nothing. torch reads the variable once, at its
    # first allocation, and no command has imported torch yet (they import it lazily); a value
    # already set wins.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


for command in (sample, adapt, invert, stylize, train_hyper, export, evaluate, info, import_, download, dataset,
                animate, serve, train_encoder, translator, translate):
    main.add_command(command)


if __name__ == "__main__":  # pragma: no cover
    main()
