"""Which MLP neurons pruning keeps, and that cutting the others out of the linear layers changes nothing else."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captioner.tools.optimize.pruning import kept_width, neuron_importance, neurons_to_keep
from captioner.tools.optimize.surgery import prune_mlp, sliced_linear


def test_kept_width_rounds_and_never_reaches_zero() -> None:
    assert kept_width(128, 0.5) == 64
    assert kept_width(3072, 0.25) == 2304
    assert kept_width(10, 0.96) == 1  # round(0.4) would be none
    assert kept_width(7, 0.0) == 7
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            kept_width(8, bad)


def test_importance_is_the_product_of_the_in_and_out_norms() -> None:
    fc_in = torch.tensor([[3.0, 4.0], [0.0, 1.0], [1.0, 0.0]])  # rows: neurons; norms 5, 1, 1
    fc_out = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])  # columns: neurons; norms 1, 2, 0
    assert neuron_importance(fc_in, fc_out).tolist() == [5.0, 2.0, 0.0]
    with pytest.raises(ValueError, match="disagree on the width"):
        neuron_importance(fc_in, fc_out[:, :2])


def test_the_most_important_are_kept_in_their_original_order() -> None:
    importance = torch.tensor([0.1, 9.0, 0.5, 3.0, 0.5])
    assert neurons_to_keep(importance, 2).tolist() == [1, 3]
    assert neurons_to_keep(importance, 3).tolist() == [1, 2, 3]  # a tie: the earlier neuron stays
    with pytest.raises(ValueError, match="cannot keep 6 of 5"):
        neurons_to_keep(importance, 6)


def test_sliced_linear_keeps_the_chosen_rows_and_columns() -> None:
    linear = nn.Linear(3, 4)
    rows = sliced_linear(linear, rows=torch.tensor([0, 2]))
    assert (rows.in_features, rows.out_features) == (3, 2)
    assert torch.equal(rows.weight, linear.weight[[0, 2]]) and torch.equal(rows.bias, linear.bias[[0, 2]])
    columns = sliced_linear(linear, columns=torch.tensor([1]))
    assert (columns.in_features, columns.out_features) == (1, 4)
    assert torch.equal(columns.weight, linear.weight[:, [1]]) and torch.equal(columns.bias, linear.bias)


class _Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(x)))


def test_pruning_neurons_that_do_nothing_leaves_the_output_unchanged() -> None:
    torch.manual_seed(0)
    mlp = _Mlp()
    with torch.no_grad():  # neurons 1, 3 and 4 write nothing back: their importance is 0
        mlp.fc2.weight[:, [1, 3, 4]] = 0.0
    x = torch.randn(5, 4)
    expected = mlp(x)
    prune_mlp(mlp, "fc1", "fc2", keep=3)
    assert (mlp.fc1.out_features, mlp.fc2.in_features) == (3, 3)
    torch.testing.assert_close(mlp(x), expected)
