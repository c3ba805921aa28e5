"""The paper's two models around a recurrent layer; each returns its own loss.

- ``SequenceClassifier``: reads a sequence and classifies it from the final hidden state
  (sequential and permuted MNIST).
- ``CharLM``: predicts the next character from one-hot characters, with the recurrent state
  passed in and returned so that it can be carried across consecutive segments (and, for a
  text read in segments as one sequence, the timestep it continues from).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cells import State
from .rnn import Recurrent


class SequenceClassifier(nn.Module):
    def __init__(self, recurrent: Recurrent, num_classes: int) -> None:
        super().__init__()
        if not recurrent.batch_first:
            raise ValueError("SequenceClassifier reads (batch, time, features): build the layer with batch_first=True")
        self.recurrent = recurrent
        self.head = nn.Linear(recurrent.hidden_size * recurrent.num_directions, num_classes)

    def forward(self, inputs: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """inputs (B, T, I), targets (B,) -> logits (B, classes), mean cross-entropy or None."""
        _, (h_n, _) = self.recurrent(inputs)
        last_layer = h_n[-self.recurrent.num_directions :]  # both directions of the top layer
        logits = self.head(torch.cat(list(last_layer), dim=-1))
        loss = None if targets is None else F.cross_entropy(logits, targets)
        return logits, loss


class CharLM(nn.Module):
    def __init__(self, recurrent: Recurrent, vocab_size: int) -> None:
        super().__init__()
        if not recurrent.batch_first or recurrent.bidirectional:
            raise ValueError("CharLM needs a unidirectional layer built with batch_first=True")
        if recurrent.input_size != vocab_size:
            raise ValueError(f"CharLM reads one-hot characters: input_size must be vocab_size={vocab_size}")
        self.recurrent = recurrent
        self.vocab_size = vocab_size
        self.head = nn.Linear(recurrent.hidden_size, vocab_size)

    def forward(
        self, inputs: Tensor, targets: Tensor | None = None, state: State | None = None, lengths: Tensor | None = None,
        first_step: int = 0,
    ) -> tuple[Tensor, Tensor | None, State]:
        """inputs (B, L) symbol ids, targets (B, L) -> logits (B, L, V), mean cross-entropy or
        None, final state. Targets of -100 (padding; ``cross_entropy``'s ``ignore_index``) are
        left out of the loss; ``lengths`` (B,), the valid prefix of each row, keeps padding
        out of batch statistics too (the layer's ``lengths``); ``first_step``: the timestep of
        the first input, where the inputs continue a text that ``state`` has read so far."""
        one_hot = F.one_hot(inputs, self.vocab_size).to(self.head.weight.dtype)
        outputs, state = self.recurrent(one_hot, state, lengths, first_step=first_step)
        logits = self.head(outputs)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss, state

    @torch.no_grad()
    def sample(self, prompt: Tensor, length: int, generator: torch.Generator | None = None) -> Tensor:
        """``prompt`` (P,) symbol ids continued to ``length`` symbols by sampling, the text read
        as one sequence: each new symbol continues the state from its timestep."""
        text = prompt.clone()
        logits, _, state = self(text.unsqueeze(0))
        while len(text) < length:
            probabilities = logits[0, -1].float().softmax(-1)
            if not probabilities.isfinite().all():
                raise FloatingPointError(f"no sample: the model's probabilities after {len(text)} symbols are not finite")
            following = torch.multinomial(probabilities.cpu(), 1, generator=generator).to(text.device)
            logits, _, state = self(following.unsqueeze(0), state=state, first_step=len(text))
            text = torch.cat([text, following])
        return text
