"""seqcore: fast fused attention and LSTM/GRU/RNN kernels.

Triton kernels on NVIDIA GPUs, C kernels (through cffi) on any CPU, float64 NumPy references,
behind one API that takes NumPy arrays and torch tensors alike:

- attention: `attention`, `attention_varlen`, `attention_with_kvcache`, `merge_attention`,
  and `scaled_dot_product_attention` (torch's SDPA signature);
- recurrent: `lstm`, `gru`, `rnn` (Elman, tanh or relu) and their cells `lstm_cell`,
  `gru_cell`, `rnn_cell` (PyTorch's weight layout);
- `available_backends`, `backend_status`: what runs here;
- `seqcore.nn` (torch modules), `seqcore.distributed` (ring attention over
  torch.distributed), `seqcore.reference` (the float64 NumPy definitions).

Each function's docstring is its reference (``help(seqcore.attention)``); docs/API.md in the
source repository collects them. ``python -m seqcore`` checks every backend here.
"""
from seqcore._backends import available_backends, backend_status
from seqcore.attention import attention, attention_varlen, merge_attention
from seqcore.kvcache import attention_with_kvcache
from seqcore.sdpa import scaled_dot_product_attention
from seqcore.recurrent import gru, gru_cell, lstm, lstm_cell, rnn, rnn_cell

__version__ = "0.1.0"

__all__ = [
    "attention", "attention_varlen", "merge_attention", "attention_with_kvcache",
    "scaled_dot_product_attention",
    "lstm_cell", "gru_cell", "rnn_cell", "lstm", "gru", "rnn",
    "available_backends", "backend_status", "nn", "reference", "distributed",
]


def __getattr__(name):
    # seqcore.nn and seqcore.distributed need torch; import them only when asked for, so NumPy
    # users never load torch.
    if name in ("nn", "reference", "distributed"):
        import importlib

        return importlib.import_module(f"seqcore.{name}")
    raise AttributeError(f"module 'seqcore' has no attribute {name!r}")
