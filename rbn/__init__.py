"""rbn: recurrent batch normalization.

``LSTM``, ``BNLSTM`` (Cooijmans et al. 2016) and ``LNLSTM`` (Ba et al. 2016), with the
constructor, forward signature, shapes and parameter names of ``torch.nn.LSTM``.
"""

from .norm import SequenceBatchNorm
from .rnn import BNLSTM, LNLSTM, LSTM, Recurrent

__all__ = ["LSTM", "BNLSTM", "LNLSTM", "Recurrent", "SequenceBatchNorm"]
