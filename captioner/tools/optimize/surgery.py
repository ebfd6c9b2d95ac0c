"""Structured pruning applied to a loaded ``BlipForConditionalGeneration``: narrower MLPs in both towers.

``pruning`` decides which neurons stay; here the ``nn.Linear`` layers are rebuilt with only those rows
(``fc_in``) and columns (``fc_out``), and each tower's ``intermediate_size`` in the config is set to the new
width, so ``save_pretrained`` writes a folder that ``from_pretrained`` loads as an ordinary, smaller BLIP.

Attention heads are not pruned. transformers' BLIP (5.x) derives the head size as ``hidden_size /
num_attention_heads`` and sizes q/k/v and the output projection at ``hidden_size`` in both towers, and 5.x no
longer has ``pruned_heads``: a config with fewer heads of the same size does not exist, so removing heads would
need modelling code of our own, and the folder would stop being a plain BLIP. The MLPs hold two thirds of each
layer's weights, so their width is where a config-compatible cut saves most.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from captioner.tools.optimize.pruning import kept_width, neuron_importance, neurons_to_keep


@dataclass(frozen=True)
class TowerPruning:
    """What pruning did to one tower."""

    tower: str  # "vision" or "text"
    layers: int
    intermediate_size: tuple[int, int]  # before, after
    num_attention_heads: int  # unchanged (see the module doc)


def sliced_linear(
    linear: nn.Linear, *, rows: torch.Tensor | None = None, columns: torch.Tensor | None = None
) -> nn.Linear:
    """A copy of ``linear`` with only the output features ``rows`` and the input features ``columns``."""
    weight = linear.weight.detach()
    bias = linear.bias.detach() if linear.bias is not None else None
    if rows is not None:
        weight = weight[rows]
        bias = bias[rows] if bias is not None else None
    if columns is not None:
        weight = weight[:, columns]
    out_features, in_features = weight.shape
    new = nn.Linear(in_features, out_features, bias=bias is not None, dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def prune_mlp(block: Any, fc_in: str, fc_out: str, keep: int) -> None:
    """Narrow one MLP (``block.<fc_in>``, ``block.<fc_out>``, or dotted paths) to its ``keep`` best neurons."""
    in_owner, in_name = _owner(block, fc_in)
    out_owner, out_name = _owner(block, fc_out)
    first: nn.Linear = getattr(in_owner, in_name)
    second: nn.Linear = getattr(out_owner, out_name)
    kept = neurons_to_keep(neuron_importance(first.weight, second.weight), keep)
    setattr(in_owner, in_name, sliced_linear(first, rows=kept))
    setattr(out_owner, out_name, sliced_linear(second, columns=kept))


def prune_blip_mlps(model: Any, fraction: float) -> list[TowerPruning]:
    """Prune ``fraction`` of the MLP width of the vision encoder and the text decoder, in place."""
    towers = [
        ("vision", model.config.vision_config, model.vision_model.encoder.layers, "mlp.fc1", "mlp.fc2"),
        ("text", model.config.text_config, model.text_decoder.bert.encoder.layer, "intermediate.dense", "output.dense"),
    ]
    done: list[TowerPruning] = []
    for name, config, layers, fc_in, fc_out in towers:
        before = int(config.intermediate_size)
        keep = kept_width(before, fraction)
        for layer in layers:
            prune_mlp(layer, fc_in, fc_out, keep)
        config.intermediate_size = keep
        done.append(TowerPruning(name, len(layers), (before, keep), int(config.num_attention_heads)))
    return done


def _owner(root: Any, path: str) -> tuple[Any, str]:
    *parents, name = path.split(".")
    for parent in parents:
        root = getattr(root, parent)
    return root, name
