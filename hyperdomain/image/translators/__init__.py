"""Translators into a domain: the image network and its files, and the solver core of NOT and ENOT
(generic over ``[B, ...]`` tensors)."""

from .costs import Cost, mean_squared_cost, quadratic_cost, weak_cost
from .enot_solver import ENOTConfig, enot_optimizers, enot_step, expectile_loss
from .files import Translator, load_translator, save_translator
from .gaussian import affine_map, gaussian_ot_map, l2_uvp, sqrtm_psd
from .network import TranslatorConfig, build_translator
from .neural_ot import NOTConfig, gamma_at, not_optimizers, not_step, transport

__all__ = [
    "Cost", "quadratic_cost", "mean_squared_cost", "weak_cost",
    "NOTConfig", "not_optimizers", "not_step", "gamma_at", "transport",
    "ENOTConfig", "enot_optimizers", "enot_step", "expectile_loss",
    "TranslatorConfig", "build_translator", "Translator", "save_translator", "load_translator",
    "gaussian_ot_map", "affine_map", "l2_uvp", "sqrtm_psd",
]
