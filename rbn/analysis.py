"""Measurements on a model at one batch, for scripts and for logging during training."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def hidden_state_gradient_norms(model: nn.Module, inputs: Tensor, targets: Tensor, **forward_options) -> Tensor:
    """‖∂loss/∂h_t‖ for every step t: the gradient flow of Cooijmans et al. 2016, Figure 1(a).

    ``model`` is a ``SequenceClassifier`` or a ``CharLM``: a ``recurrent`` layer, and a forward
    ``model(inputs, targets, **forward_options)`` whose second output is the loss (a CharLM's
    ``state`` and ``lengths`` go in ``forward_options``).

    Returns a (T,) float32 tensor, detached, on the inputs' device: at step t, the mean over the
    batch of each sequence's ‖∂loss/∂h_t‖, the gradient through every later step (and, for a
    language model, through step t's own prediction too). The mean of per-sequence norms is
    what the authors' script for Figure 1(a) plots. The loss is the model's own mean over the
    batch, so the norms shrink about as 1 / batch size: compare curves made with one batch size.
    Of a stack, the top layer's h_t; a bidirectional top layer's norm at time t is over both
    directions' h_t at that time. With ``lengths``, step t averages over the sequences still
    running.

    The model runs in the mode it is in. In training mode: batch statistics, h0 noise, dropout,
    and BN's running statistics updated as by any training forward (inside
    ``rbn.trainer.using_batch_statistics``, a model in eval mode normalizes with batch
    statistics and leaves them as they were). In eval mode it draws no random numbers. It
    computes gradients even under ``torch.no_grad``, and leaves every parameter's ``.grad``
    as it was.
    """
    recurrent = model.recurrent
    with torch.enable_grad(), recurrent.recording_hidden_states() as recorded:
        loss = model(inputs, targets, **forward_options)[1]
    top = recorded[-recurrent.num_directions :]
    in_time_order = [top[0], *(steps[::-1] for steps in top[1:])]  # a reverse direction's list runs backward
    gradients = torch.autograd.grad(loss, [h for steps in in_time_order for h in steps])
    squares = [gradient.float().square().sum(-1) for gradient in gradients]  # per sequence
    steps = len(top[0])
    return torch.stack([sum(squares[t::steps]).sqrt().mean() for t in range(steps)])  # step t of each direction
