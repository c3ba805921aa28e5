"""Initializations: the paper's orthogonal and identity-g schemes, forget-gate bias 1."""

import pytest
import torch

from conftest import make

H = 4


def blocks(weight):
    return weight.detach().chunk(4, 0)


@pytest.mark.parametrize("init", ["orthogonal", "identity_g"])
def test_gate_blocks_are_orthogonal(layer_name, init):
    model = make(layer_name, hidden_size=H, init=init, num_layers=2)
    for name in ["weight_hh_l0", "weight_hh_l1", "weight_ih_l1"]:
        for block in blocks(getattr(model, name)):
            torch.testing.assert_close(block @ block.T, torch.eye(H), atol=1e-5, rtol=0)


def test_identity_g_makes_only_the_g_block_of_w_h_the_identity(layer_name):
    model = make(layer_name, hidden_size=H, init="identity_g")
    i, f, g, o = blocks(model.weight_hh_l0)
    assert torch.equal(g, torch.eye(H))
    assert not any(torch.allclose(block, torch.eye(H)) for block in (i, f, o))


@pytest.mark.parametrize("init", ["orthogonal", "identity_g"])
def test_forget_gate_bias_is_one_and_other_biases_zero(layer_name, init):
    model = make(layer_name, hidden_size=H, init=init, bidirectional=True)
    for suffix in ["_l0", "_l0_reverse"]:
        names = ["bias_ih", "bias_hh"] if layer_name == "LSTM" else ["bias"]
        total = sum(getattr(model, name + suffix) for name in names)
        torch.testing.assert_close(total, torch.tensor([0.0] * H + [1.0] * H + [0.0] * 2 * H))


def test_reset_parameters_restores_the_initial_gains():
    model = make("BNLSTM")
    with torch.no_grad():
        model.bn_h_l0.gamma.fill_(3.0)
    model.reset_parameters()
    assert (model.bn_h_l0.gamma == 0.1).all()
