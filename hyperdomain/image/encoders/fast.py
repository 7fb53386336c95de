"""Inference copies of an encoder network: each BatchNorm that follows a convolution folded into it.

IR-SE50 normalises after its stem convolution, after each unit's second convolution and after each
projecting shortcut; in eval mode those are affine maps that the convolution can absorb, which saves
a pass over every such map. The BatchNorm that opens each unit comes before a zero-padded convolution,
so folding it would change the border pixels: it stays. The copy shares every other tensor with the
network (no second copy of the heads' weights).
"""
from __future__ import annotations

import copy
import itertools

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval

Key = tuple[tuple[int, int], ...]


def weights_key(net: nn.Module) -> Key:
    """Changes whenever a weight does: storage (``to``, ``load_state_dict(assign=True)``) or an
    in-place update (an optimizer step bumps the tensor's version; inference tensors have none)."""
    return tuple((t.data_ptr(), 0 if t.is_inference() else t._version)
                 for t in itertools.chain(net.parameters(), net.buffers()))


def folded_copy(net: nn.Module) -> nn.Module:
    """``net`` (eval mode) with every conv-then-BatchNorm pair of its ``Sequential``s made one conv."""
    shared = {id(t): t for t in itertools.chain(net.parameters(), net.buffers())}
    fast = copy.deepcopy(net, shared)
    for seq in fast.modules():
        if isinstance(seq, nn.Sequential):
            _fold_pairs(seq)
    return fast.eval()


def _fold_pairs(seq: nn.Sequential) -> None:
    for i in range(len(seq) - 1):
        conv, bn = seq[i], seq[i + 1]
        if isinstance(conv, nn.Conv2d) and isinstance(bn, _BatchNorm) and bn.track_running_stats:
            with torch.no_grad():
                seq[i] = fuse_conv_bn_eval(conv, bn)
            seq[i + 1] = nn.Identity()
