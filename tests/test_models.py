"""The paper's two models around a recurrent layer (rbn.models)."""

import pytest
import torch

from rbn.models import CharLM
from conftest import make


def test_a_samples_first_symbol_is_drawn_from_the_prediction_after_the_whole_prompt():
    model = CharLM(make("LSTM", 7, 6, batch_first=True), 7).eval()
    with torch.no_grad():
        model.head.weight.mul_(10)  # sharp distributions: another step's prediction draws another symbol
    for seed in range(10):
        prompt = torch.randint(7, (5,), generator=torch.Generator().manual_seed(seed))
        probabilities = model(prompt.unsqueeze(0))[0][0, -1].softmax(-1)
        following = torch.multinomial(probabilities, 1, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(model.sample(prompt, 6, torch.Generator().manual_seed(seed)), torch.cat([prompt, following])), seed


@pytest.mark.parametrize("layer_name", ["BNLSTM", "LNLSTM"])
def test_a_sample_draws_each_symbol_after_the_whole_text_so_far_read_as_one_sequence(layer_name):
    model = CharLM(make(layer_name, 7, 6, batch_first=True, **({"max_length": 40} if layer_name == "BNLSTM" else {})), 7)
    with torch.no_grad():  # statistics of their own for every timestep, and sharp distributions
        for name, tensor in [*model.named_buffers(), *model.named_parameters()]:
            if name.endswith(("running_mean", "running_var", "gamma")):
                tensor.uniform_(0.2, 3.0)
        model.head.weight.mul_(10)
    model.eval()
    prompt = torch.tensor([1, 2, 3])
    expected, generator = prompt.clone(), torch.Generator().manual_seed(0)
    while len(expected) < 40:  # each symbol from the text read whole, from its first timestep
        probabilities = model(expected.unsqueeze(0))[0][0, -1].softmax(-1)
        expected = torch.cat([expected, torch.multinomial(probabilities, 1, generator=generator)])
    assert torch.equal(model.sample(prompt, 40, torch.Generator().manual_seed(0)), expected)
