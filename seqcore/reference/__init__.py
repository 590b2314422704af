"""float64 NumPy reference implementations of every seqcore op, forward and backward.

NumPy (or anything np.asarray takes) in, float64 out: the definition every backend is held to.
"""
from seqcore.reference.attention import (attention, attention_bwd, attention_varlen,
                                         attention_varlen_bwd, attention_with_kvcache,
                                         cache_rows, merge_attention)
from seqcore.reference.recurrent import (gru, gru_bwd, gru_cell, gru_cell_bwd, lstm, lstm_bwd,
                                         lstm_cell, lstm_cell_bwd, rnn, rnn_bwd, rnn_cell,
                                         rnn_cell_bwd)

__all__ = [
    "attention", "attention_bwd", "attention_varlen", "attention_varlen_bwd", "merge_attention",
    "attention_with_kvcache", "cache_rows",
    "lstm_cell", "gru_cell", "lstm", "gru",
    "lstm_bwd", "gru_bwd", "lstm_cell_bwd", "gru_cell_bwd",
    "rnn", "rnn_bwd", "rnn_cell", "rnn_cell_bwd",
]
