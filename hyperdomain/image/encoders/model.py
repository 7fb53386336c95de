"""An encoder ready to use: its config, its network and the average latent it starts from."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ...errors import HyperdomainError
from .config import EncoderConfig, a_kind
from .networks import build_network
from .state import check_latent_avg


class PhotoEncoder(nn.Module):
    """``encoder`` (the network, official parameter names) and ``latent_avg`` ``[n_styles, 512]``
    (None for an e4e that does not start from it): its state dict is exactly the tensors of an
    encoder file (``encoder.*``, ``latent_avg``). ``meta``: plain data about where it came from
    (``generator_fingerprint``, ``source``, ``file``)."""

    def __init__(self, config: EncoderConfig, meta: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.config = config
        self.meta = dict(meta or {})
        self.encoder = build_network(config)
        avg = torch.zeros(config.n_styles, config.w_dim) if config.needs_latent_avg else None
        self.register_buffer("latent_avg", avg)

    @classmethod
    def from_state(cls, config: EncoderConfig, encoder_state: Mapping[str, torch.Tensor],
                   latent_avg: torch.Tensor | None, meta: Mapping[str, Any] | None = None) -> "PhotoEncoder":
        """Built from ``config`` and loaded strictly, in eval mode; ``latent_avg`` ``[n_styles, 512]`` or
        one ``[512]`` code for every layer. The tensors are taken as they are
        (check them first: ``state.check_encoder_state``); no random initialisation is spent on a
        network whose every weight is then replaced."""
        if config.needs_latent_avg and latent_avg is None:
            raise HyperdomainError(f"{a_kind(config.kind)} encoder needs the average latent, and none was given")
        with torch.device("meta"):
            model = cls(config, meta)
        try:
            model.encoder.load_state_dict(dict(encoder_state), strict=True, assign=True)
        except RuntimeError as e:  # torch lists every mismatch over many lines
            detail = " ".join(str(e).split())[:300]
            raise HyperdomainError(f"the state does not fit {a_kind(config.kind)} encoder with {config.n_styles} style "
                                   f"layers ({detail})") from None
        model.latent_avg = check_latent_avg(latent_avg, config, "encoder") if config.needs_latent_avg else None
        model.requires_grad_(False)
        return model.eval()
