"""BN-LSTM and LN-LSTM agree with naive implementations written from the papers' equations."""

import torch

from conftest import make


def batch_norm(x, gamma, beta=0.0, eps=1e-5):
    """Cooijmans et al. eq. 5 with the statistics of this batch."""
    return beta + gamma * (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + eps)


def layer_norm(x, alpha, beta, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    return alpha * (x - mean) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps) + beta


def reference_lstm(x, W_x, W_h, b, norm_x, norm_h, norm_c):
    """(i, f, g, o) = norm_h(W_h h) + norm_x(W_x x) + b; c = s(f) c + s(i) tanh(g); h = s(o) tanh(norm_c(c))."""
    h = c = torch.zeros(x.shape[1], W_h.shape[1])
    outputs = []
    for x_t in x:
        gates = norm_h(h @ W_h.T) + norm_x(x_t @ W_x.T) + b
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(norm_c(c))
        outputs.append(h)
    return torch.stack(outputs), h, c


def test_bnlstm_follows_the_paper_in_training():
    model = make("BNLSTM").train()
    with torch.no_grad():
        for name, p in model.named_parameters():  # move gains and biases off their initial values
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(6, 5, 3)
    expected, h, c = reference_lstm(
        x, model.weight_ih_l0, model.weight_hh_l0, model.bias_l0,
        lambda z: batch_norm(z, model.bn_x_l0.gamma),
        lambda z: batch_norm(z, model.bn_h_l0.gamma),
        lambda z: batch_norm(z, model.bn_c_l0.gamma, model.bn_c_l0.beta),
    )
    output, (h_n, c_n) = model(x)
    torch.testing.assert_close(output, expected)
    torch.testing.assert_close(h_n[0], h)
    torch.testing.assert_close(c_n[0], c)  # the unnormalized cell is what is carried


def test_lnlstm_follows_the_paper():
    model = make("LNLSTM").train()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(6, 5, 3)
    ln = lambda module: (lambda z: layer_norm(z, module.weight, module.bias))  # noqa: E731
    expected, h, c = reference_lstm(
        x, model.weight_ih_l0, model.weight_hh_l0, model.bias_l0, ln(model.ln_x_l0), ln(model.ln_h_l0), ln(model.ln_c_l0)
    )
    output, (h_n, c_n) = model(x)
    torch.testing.assert_close(output, expected)
    torch.testing.assert_close(h_n[0], h)
    torch.testing.assert_close(c_n[0], c)
