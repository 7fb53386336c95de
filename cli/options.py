"""Options whose defaults and choices live in the library, read only when click needs them.

A default (300 steps, batch 8, lr 5e-5, ...) has one home: a field of the library's config
dataclass or a parameter of its public function. The CLI reads it from there rather than typing
it again, and lazily, because the library imports torch (seconds) and ``hyperdomain --help``
should not wait for that; a command's own ``--help`` and its run do import it.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
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
    if dataclasses.is_dataclass(value) and hasattr(value, "as_dict"):  # loss weights: NAME=WEIGHT items
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
MAX_LR = 1000
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
