"""The command line's options: those shared by several commands, declared once as groups
(``generator_option``, ``domain_source_options``, ``photo_options``, ``loss`` and run options),
and options whose defaults and choices live in the library, read only when click needs them.

A default (300 steps, batch 8, lr 5e-5, ...) has one home: a field of the library's config
dataclass or a parameter of its public function. The CLI reads it from there rather than typing
it again, and lazily, because the library imports torch (seconds) and ``hyperdomain --help``
should not wait for that; a command's own ``--help`` and its run do import it.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import click


def library_default(owner: Callable[[], Any], name: str) -> Any:
    """The default of ``name`` in ``owner()``: a config dataclass's field or a function's parameter."""
    obj = owner()
    if dataclasses.is_dataclass(obj):
        field = {f.name: f for f in dataclasses.fields(obj)}[name]
        return field.default_factory() if field.default is dataclasses.MISSING else field.default
    return inspect.signature(obj).parameters[name].default


class LibraryDefault(click.Option):
    """An option whose default is ``library_default(owner, field)`` (``field`` defaults to the option's name).

    With ``fallback=True`` the option stays None unless given (something else, such as the
    generator's paper recipe, may fill it) and its help names the library default as the fallback.
    """

    def __init__(self, *decls: str, owner: Callable[[], Any], field: str | None = None, fallback: bool = False,
                 fallback_help: str = "the generator's recipe, else", also: tuple[Callable[[], Any], str] | None = None,
                 **kwargs: Any):
        super().__init__(*decls, show_default=True, **kwargs)
        self._owner, self._field = owner, field or self.name
        self._fallback, self._fallback_help, self._also = fallback, fallback_help, also
        if not fallback:
            self.default = lambda: library_default(self._owner, self._field)

    def get_default(self, ctx: click.Context, call: bool = True) -> Any:
        return super().get_default(ctx, call=True)  # --help shows the value, not "(dynamic)"

    def get_help_extra(self, ctx: click.Context):
        extra = super().get_help_extra(ctx)
        if self._fallback:
            extra["default"] = f"{self._fallback_help} {_shown(library_default(self._owner, self._field))}".strip()
        if self._also is not None:  # a second home for another mode of the command (adapt --image)
            owner, label = self._also
            extra["default"] = f"{extra.get('default', '')}; {label} {_shown(library_default(owner, self._field))}"
        return extra


def _shown(value: Any) -> str:
    if hasattr(value, "as_dict"):  # loss weights: NAME=WEIGHT items
        return " ".join(f"{k}={v:g}" for k, v in value.as_dict().items())
    if isinstance(value, (tuple, list)):
        return ", ".join(map(str, value))
    return str(value)


class LibraryChoice(click.Choice):
    """``click.Choice`` over a sequence the library holds, read when first needed."""

    def __init__(self, load: Callable[[], Sequence[str]]):
        self._load = load
        super().__init__(())

    @property
    def choices(self) -> Sequence[str]:
        return tuple(self._load())

    @choices.setter
    def choices(self, value: Sequence[str]) -> None:  # click.Choice.__init__ assigns it; the library's list wins
        pass


class FiniteFloat(click.FloatRange):
    """``click.FloatRange`` that also refuses NaN and infinities (NaN passes every comparison)."""

    name = "finite float"

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            bounded = self.min is not None or self.max is not None
            within = f" in the range {self._describe_range()}" if bounded else ""
            self.fail(f"{value!r} is not a finite number{within}.", param, ctx)
        return super().convert(number, param, ctx)


SEED = click.IntRange(0, 2**63 - 1)  # what torch's generators take
# Every --lr (adapt, train-hyper, invert, stylize, serve): Adam moves each number by about lr a step,
# and what it trains (domain vectors, latents, weights) is of order 1, so a larger rate only blows
# up; past ~3e37 Adam's step overflows float32 itself.
MAX_LR = 1000  # training.run_config.MAX_LR, repeated so that --help loads no torch (a test keeps them equal)
LEARNING_RATE = FiniteFloat(0, MAX_LR, min_open=True)


# ---- where the defaults live (functions, so nothing is imported until asked) ---------------------
def adapt_config():
    from hyperdomain import AdaptConfig

    return AdaptConfig


def image_config():
    from hyperdomain import ImageAdaptConfig

    return ImageAdaptConfig


def inversion_config():
    from hyperdomain import InversionConfig

    return InversionConfig


def hyper_config():
    from hyperdomain import HyperTrainConfig

    return HyperTrainConfig


def evaluate_function():
    from hyperdomain import evaluate

    return evaluate


def sample_method():
    from hyperdomain import Generator

    return Generator.sample


def template_sets() -> Sequence[str]:
    from hyperdomain.guidance.clip import TEMPLATE_SETS

    return TEMPLATE_SETS


def noise_modes() -> Sequence[str]:
    from hyperdomain.model.generator import NOISE_MODES

    return NOISE_MODES


# ---- option groups: one concept, declared once, used by every command that has it -----------------
def option_group(*options: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A decorator applying ``options`` (``click.option(...)`` decorators) in the order given; its
    ``names`` are the parameter names it adds (so a command can ask which of them were set)."""
    def apply(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn

    def probe():
        pass

    apply(probe)
    apply.names = tuple(p.name for p in reversed(probe.__click_params__))
    return apply


generator_option = click.option("--generator", "-g", default="ffhq", show_default=True,
                                help="Manifest name (see `hyperdomain download --list`) or checkpoint path.")
device_option = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
progress_option = click.option("--progress/--no-progress", default=True, help="Show a progress bar.")


hyper_clip_option = click.option(
    "--hyper-clip", metavar="SPEC", help="The hypernetwork's prompt encoder, e.g. a local weights file (ViT-B-32=FILE) "
                                         "[default: the one it was trained with].")


def domain_source_options(domains: str = "A domain file (.safetensors); repeatable.", prompts: bool = True,
                          no_check: str = "Use domains made for a generator with another fingerprint."):
    """Where a command's domains come from: ``--domain`` files, a ``--hyper`` network's ``--prompt``
    domains (``prompts=False``: the command takes no prompt, e.g. the web app's page types them),
    its prompt encoder ``--hyper-clip``, and ``--no-check``. Loaded by :func:`cli.loading.load_domains`."""
    options = [
        click.option("--domain", "-d", "domains", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
                     help=domains),
        click.option("--hyper", type=click.Path(dir_okay=False, path_type=Path),
                     help="A hypernetwork file" + (", with --prompt." if prompts else ".")),
    ]
    if prompts:
        options.append(click.option("--prompt", "-p", "prompts", multiple=True,
                                    help="A domain in words for --hyper; repeatable."))
    options += [hyper_clip_option, click.option("--no-check", is_flag=True, help=no_check)]
    return option_group(*options)


detector_options = option_group(
    click.option("--detector", type=click.Choice(["auto", "dlib", "mediapipe"]), default="auto",
                 show_default=True, help="The face landmark detector for --align."),
    click.option("--detector-weights", type=click.Path(dir_okay=False, path_type=Path),
                 help="The detector's model file (offline) [default: downloaded once]."),
)
lpips_vgg_option = click.option(
    "--lpips-vgg", metavar="FILE", help="torchvision's VGG16 weights file for LPIPS (offline) [default: downloaded "
                                        "once]; 'random' checks the pipeline without weights (tests only).")

photo_options = option_group(
    click.option("--align/--no-align", default=None,
                 help="Align each photo as FFHQ's faces [default: on for face generators (ffhq, metfaces)]."),
    detector_options,
    lpips_vgg_option,
    click.option("--steps", cls=LibraryDefault, owner=inversion_config, type=click.IntRange(1),
                 help="Inversion steps."),
    click.option("--lr", cls=LibraryDefault, owner=inversion_config, type=LEARNING_RATE,
                 help="The inversion's Adam learning rate."),
    click.option("--pca-samples", cls=LibraryDefault, owner=inversion_config, type=click.IntRange(2),
                 help="Mapped latents behind the P-norm prior (computed once per generator, cached)."),
)
"""The options every command that reads photos shares: alignment, detector, LPIPS, inversion."""

encoder_options = option_group(
    click.option("--encoder", default="auto", show_default=True, metavar="auto|ii2s|e4e|restyle-e4e|restyle-psp|FILE",
                 help="How a photo becomes a latent: an encoder in one pass (e4e) or a few (ReStyle): the "
                      "generator's release, downloaded on first use, or an encoder file; or ii2s, the optimisation "
                      "(--steps; slower, closer). auto: the generator's encoder if already downloaded, else ii2s."),
    click.option("--restyle-steps", type=click.IntRange(1), help="A ReStyle encoder's passes [default: its own, 5]."),
    click.option("--refine", type=click.IntRange(0), default=0, show_default=True,
                 help="II2S steps starting from the encoder's latent (0: the encoder alone)."),
)
"""How photos are inverted: an encoder (loaded by :func:`cli.loading.photo_encoder`), refined or not."""

log_option = click.option("--log", "log", multiple=True, metavar="tensorboard|wandb",
                          help="Also log losses, learning rate, step time and sample grids to TensorBoard "
                               "(RUN/tensorboard/) or Weights & Biases; repeatable or a comma list [default: "
                               "log.jsonl only].")
resume_option = click.option("--resume", type=click.Path(file_okay=False, path_type=Path),
                             help="Continue the run in this folder (its settings are kept; --iters may extend it).")


class LossOption(LibraryDefault):
    """``--loss NAME=WEIGHT`` of a trainer: its help lists the loss registry's losses for that trainer
    (``run``; and the others ``also_run`` adds), built when the help is shown (``--help`` loads no torch)."""

    def __init__(self, *decls: str, run: str, also_run: tuple[str, str] | None = None, **kwargs: Any):
        super().__init__(*decls, multiple=True, metavar="NAME=WEIGHT", **kwargs)
        self._run, self._also_run = run, also_run

    def get_help_record(self, ctx: click.Context):
        from hyperdomain.guidance.losses import LOSSES, losses_of

        def listed(names) -> str:
            return "; ".join(f"{n} ({LOSSES[n].help})" for n in names)

        self.help = f"Loss weights, repeatable: {listed(losses_of(self._run))}."
        if self._also_run is not None:
            run, label = self._also_run
            extra = [n for n in losses_of(run) if n not in losses_of(self._run)]
            self.help += f" {label.capitalize()} also: {listed(extra)}."
        return super().get_help_record(ctx)
