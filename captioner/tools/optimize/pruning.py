"""Which MLP neurons structured pruning keeps: pure decisions on weight tensors, no model involved.

An MLP block is ``fc_out(act(fc_in(x)))``; intermediate neuron ``j`` is row ``j`` of ``fc_in`` and column ``j``
of ``fc_out``. Its importance is the product of the two norms, ``||fc_in[j, :]|| * ||fc_out[:, j]||``: how much
it can take from the input times how much it can write back (the magnitude criterion of structured-pruning work
such as Li et al. 2017 and Minitron's width pruning, without a calibration pass). A neuron with either side near
zero contributes little whatever its activation, so it goes first.

Every layer of a tower keeps the same number of neurons: BLIP's config has one ``intermediate_size`` per tower,
and the pruned folder must load as a normal BLIP. Which neurons is decided per layer.
"""

from __future__ import annotations

import torch


def kept_width(width: int, fraction: float) -> int:
    """How many of ``width`` neurons survive pruning ``fraction`` of them (rounded, never none)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the fraction to prune must be in [0, 1), got {fraction}")
    return max(1, min(width, round(width * (1.0 - fraction))))


def neuron_importance(fc_in_weight: torch.Tensor, fc_out_weight: torch.Tensor) -> torch.Tensor:
    """Importance of each intermediate neuron: ``fc_in_weight`` is [width, hidden], ``fc_out_weight`` [hidden,
    width] (``nn.Linear`` layout); the result is [width]."""
    if fc_in_weight.shape[0] != fc_out_weight.shape[1]:
        raise ValueError(
            f"MLP weights disagree on the width: {tuple(fc_in_weight.shape)} and {tuple(fc_out_weight.shape)}"
        )
    importance: torch.Tensor = fc_in_weight.float().norm(dim=1) * fc_out_weight.float().norm(dim=0)
    return importance


def neurons_to_keep(importance: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the ``keep`` most important neurons, in their original order (so the kept ones stay aligned)."""
    if not 1 <= keep <= importance.numel():
        raise ValueError(f"cannot keep {keep} of {importance.numel()} neurons")
    # A stable sort: among equal importances the earlier neuron is kept, so the choice is reproducible.
    order = torch.sort(importance, descending=True, stable=True).indices
    return torch.sort(order[:keep]).values
