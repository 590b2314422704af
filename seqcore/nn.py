"""torch.nn modules over seqcore's kernels: LSTM, GRU, RNN and their cells (LSTMCell,
GRUCell, RNNCell), MultiheadAttention (torch's nn.MultiheadAttention, drop-in),
MultiheadSelfAttention (a fused-qkv self-attention with GQA and decoding), and KVCache (the
keys and values a decoding MultiheadSelfAttention keeps).

LSTM, GRU and RNN are drop-in replacements for torch.nn.LSTM / GRU / RNN: the same constructor,
attributes, parameter names (weight_ih_l{k}{_reverse}, ...), initialization and outputs, so a
state_dict moves between them in both directions. Each layer and direction is one call of
seqcore.lstm / seqcore.gru / seqcore.rnn (the backward direction with reverse=True, and the
lengths of a PackedSequence so padding is never read). The cells are one seqcore.lstm_cell /
gru_cell / rnn_cell call each.
"""
import math
import numbers
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import seqcore
from seqcore.attention import check_dropout

__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "MultiheadAttention",
           "MultiheadSelfAttention", "KVCache"]


class _RNNBase(nn.Module):
    """Shared by LSTM, GRU and RNN; subclasses set `mode`, `_gates` and `_has_cell`."""

    mode = ""
    _gates = 0
    _has_cell = False

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None, backend=None,
                 proj_size=0):
        super().__init__()
        _check_sizes(input_size, hidden_size, num_layers, dropout)
        if isinstance(proj_size, bool) or not isinstance(proj_size, numbers.Integral) \
                or proj_size < 0:
            raise ValueError(f"proj_size must be an int >= 0, got {proj_size!r}")
        if proj_size >= hidden_size:
            raise ValueError(f"proj_size has to be smaller than hidden_size (as torch), got "
                             f"proj_size={proj_size}, hidden_size={hidden_size}")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout acts between layers, so it does nothing with num_layers=1 "
                          f"(got dropout={dropout})", UserWarning, stacklevel=3)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first = bool(bias), bool(batch_first)
        self.dropout, self.bidirectional = float(dropout), bool(bidirectional)
        self.proj_size = int(proj_size)
        self.backend = backend
        factory = {"device": device, "dtype": dtype}
        self._flat_weights_names = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else self._out_size * self._dirs
            for suffix in self._suffixes:
                self._add_layer_params(layer, suffix, layer_input, factory)
        self.reset_parameters()

    @property
    def _dirs(self):
        return 2 if self.bidirectional else 1

    @property
    def _out_size(self):
        """Features of h and of each direction's output: proj_size with a projection, else H."""
        return self.proj_size or self.hidden_size

    @property
    def _suffixes(self):
        return ("", "_reverse")[:self._dirs]

    def _add_layer_params(self, layer, suffix, layer_input, factory):
        rows = self._gates * self.hidden_size
        shapes = {"weight_ih": (rows, layer_input), "weight_hh": (rows, self._out_size)}
        if self.bias:
            shapes.update(bias_ih=(rows,), bias_hh=(rows,))
        if self.proj_size:  # (after the biases, as torch orders _flat_weights_names)
            shapes.update(weight_hr=(self.proj_size, self.hidden_size))
        for kind, shape in shapes.items():
            name = f"{kind}_l{layer}{suffix}"
            self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
            self._flat_weights_names.append(name)

    def reset_parameters(self):
        """Re-initialize every weight and bias uniform in ``+-1/sqrt(hidden_size)`` (torch's
        init)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    @property
    def _flat_weights(self):
        """The parameters in ``_flat_weights_names`` order, as torch's RNN modules keep them
        (code that reads ``module._flat_weights`` works unchanged)."""
        return [getattr(self, name) for name in self._flat_weights_names]

    def flatten_parameters(self):
        """Nothing to do: seqcore's kernels read each layer's weights where they are (torch
        packs them into one buffer for cuDNN here). Kept so code that calls it runs."""
        return None

    @property
    def all_weights(self):
        """``[[w_ih, w_hh, b_ih, b_hh], ...]`` per layer and direction, as torch's (without
        the biases when ``bias=False``; ``w_hr`` last with a projection)."""
        per = (4 if self.bias else 2) + (1 if self.proj_size else 0)
        flat = self._flat_weights
        return [flat[i:i + per] for i in range(0, len(flat), per)]

    def _layer_params(self, layer, direction):
        suffix = f"_l{layer}{self._suffixes[direction]}"
        get = lambda kind: getattr(self, kind + suffix) if self.bias or "weight" in kind else None  # noqa: E731
        w_hr = get("weight_hr") if self.proj_size else None
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"), w_hr

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0),
                              ("bidirectional", False), ("proj_size", 0), ("backend", None)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)!r}"
        return s

    # -- forward ------------------------------------------------------------------------------

    def forward(self, input, hx=None):
        """Run every layer over a sequence, exactly as ``torch.nn.LSTM`` / ``torch.nn.GRU``.

        ``D`` below is 2 if bidirectional else 1, ``H`` the hidden size.

        Parameters
        ----------
        input : torch.Tensor or PackedSequence
            ``(T, B, input_size)`` (``(B, T, input_size)`` with ``batch_first``), an
            unbatched ``(T, input_size)``, or a ``PackedSequence`` (its lengths go to the
            kernels, so padding is never read; the output is then one too, sharing its
            ``batch_sizes``).
        hx : torch.Tensor or (torch.Tensor, torch.Tensor), optional
            GRU: ``h_0``; LSTM: ``(h_0, c_0)``. Each ``(num_layers * D, B, H)``, or
            ``(num_layers * D, H)`` for unbatched input; zeros when None.

        Returns
        -------
        output : torch.Tensor or PackedSequence
            ``(T, B, D * H)`` (``(B, T, D * H)`` with ``batch_first``, ``(T, D * H)``
            unbatched): the last layer's hidden state at every step, the directions
            concatenated.
        h_n : torch.Tensor, shape (num_layers * D, B, H)
            GRU: the final hidden state of every layer and direction. LSTM returns
            ``(h_n, c_n)`` in its place, both of that shape.

        Raises
        ------
        ValueError
            input that is not 2-d, 3-d or packed, or of the wrong feature size; states of the
            wrong shape.
        TypeError
            hx of the wrong structure (LSTM: a pair of tensors; GRU: a tensor).
        """
        x, lengths, unbatched = self._time_major(input)
        states = self._initial_states(hx, x.shape[1], unbatched, x)
        out, finals = self._run_layers(x, lengths, states)
        finals = [torch.stack(f) for f in finals]
        if unbatched:
            finals = [f.squeeze(1) for f in finals]
            out = out.squeeze(1)
        if isinstance(input, PackedSequence):
            out = _repack(out, lengths, input)
        elif self.batch_first and not unbatched:
            out = out.transpose(0, 1)
        hidden = tuple(finals) if self._has_cell else finals[0]
        return out, hidden

    def _time_major(self, input):
        """(x (T, B, I), lengths or None, unbatched) from any accepted input layout."""
        if isinstance(input, PackedSequence):
            x, lengths = pad_packed_sequence(input)  # original batch order
            self._check_input_size(x)
            return x, lengths, False
        if not isinstance(input, torch.Tensor) or input.dim() not in (2, 3):
            shape = tuple(input.shape) if isinstance(input, torch.Tensor) else type(input).__name__
            raise ValueError(f"{type(self).__name__}: input must be (T, B, input_size) "
                             f"((B, T, input_size) with batch_first), (T, input_size) or a "
                             f"PackedSequence, got {shape}")
        self._check_input_size(input)
        if input.dim() == 2:
            return input.unsqueeze(1), None, True
        return (input.transpose(0, 1) if self.batch_first else input), None, False

    def _check_input_size(self, x):
        if x.shape[-1] != self.input_size:
            raise ValueError(f"{type(self).__name__}: input.size(-1) must equal input_size="
                             f"{self.input_size}, got input of shape {tuple(x.shape)}")

    def _initial_states(self, hx, B, unbatched, x):
        """[h0] (GRU) or [h0, c0] (LSTM), each None or (layers * dirs, B, H)."""
        n = 2 if self._has_cell else 1
        if hx is None:
            return [None] * n
        given = list(hx) if self._has_cell else [hx]
        if len(given) != n or not all(isinstance(s, torch.Tensor) for s in given):
            raise TypeError(f"{type(self).__name__}: hx must be "
                            f"{'a (h_0, c_0) pair of tensors' if n == 2 else 'a tensor'}")
        lead = (self.num_layers * self._dirs,) + (() if unbatched else (B,))
        for name, s in zip(("h_0", "c_0"), given):
            want = lead + ((self._out_size,) if name == "h_0" else (self.hidden_size,))
            if tuple(s.shape) != want:
                raise ValueError(f"{type(self).__name__}: {name} must have shape {want}, got "
                                 f"{tuple(s.shape)} (input {tuple(x.shape)})")
        return [s.unsqueeze(1) if unbatched else s for s in given]

    def _run_layers(self, x, lengths, states):
        """Output of the last layer (T, B, dirs * H) and per-state lists of finals."""
        finals = [[] for _ in states]
        layer_input = x
        for layer in range(self.num_layers):
            outs = []
            for direction in range(self._dirs):
                index = layer * self._dirs + direction
                init = [None if s is None else s[index] for s in states]
                y, last = self._run_one(layer_input, layer, direction, init, lengths)
                outs.append(y)
                for store, state in zip(finals, last):
                    store.append(state)
            layer_input = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
            if self.training and self.dropout > 0 and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        return layer_input, finals

    def _run_one(self, x, layer, direction, init, lengths):
        """One layer in one direction: (y, [h_n] or [h_n, c_n])."""
        *params, w_hr = self._layer_params(layer, direction)
        options = dict(lengths=lengths, reverse=direction == 1, backend=self.backend)
        if self._has_cell:
            y, (h_n, c_n) = seqcore.lstm(x, *params, *init, w_hr=w_hr, **options)
            return y, [h_n, c_n]
        if self._gates == 1:
            y, h_n = seqcore.rnn(x, *params, *init, nonlinearity=self.nonlinearity, **options)
        else:
            y, h_n = seqcore.gru(x, *params, *init, **options)
        return y, [h_n]


def _check_nonlinearity(nonlinearity):
    if nonlinearity not in ("tanh", "relu"):  # (torch's message)
        raise ValueError(f"Unknown nonlinearity {nonlinearity!r}. Select from 'tanh' or "
                         "'relu'.")


def _refuse_projection(kwargs):
    if "proj_size" in kwargs:  # (torch's message and type)
        raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")


def _check_sizes(input_size, hidden_size, num_layers, dropout):
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size),
                        ("num_layers", num_layers)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= dropout <= 1:
        raise ValueError(f"dropout must be a number in [0, 1], got {dropout!r}")


def _repack(padded, lengths, like):
    """A PackedSequence with `like`'s batch_sizes and indices from padded (T, B, F) output."""
    order = like.sorted_indices
    if order is not None:
        padded, lengths = padded.index_select(1, order), lengths[order.cpu()]
    data = pack_padded_sequence(padded, lengths, enforce_sorted=True).data
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)


class LSTM(_RNNBase):
    """torch.nn.LSTM on `seqcore.lstm`: same arguments, parameters, init and outputs.

    A drop-in replacement for ``torch.nn.LSTM``: the same constructor, attributes,
    parameter names (``weight_ih_l{k}{_reverse}``, ...), initialization and outputs, so a
    ``state_dict`` moves between the two in both directions.

    Parameters
    ----------
    input_size : int
        Features of the input, ``I``.
    hidden_size : int
        Features of the hidden state, ``H``.
    num_layers : int, default 1
        Stacked layers; layer ``k > 0`` takes the previous layer's output, ``D * H``
        features (``D = 2`` if bidirectional, else 1).
    bias : bool, default True
        Whether each layer has ``bias_ih_l{k}`` and ``bias_hh_l{k}``.
    batch_first : bool, default False
        Input and output are ``(B, T, .)`` instead of ``(T, B, .)`` (the states are not).
    dropout : float, default 0.0
        Dropout on the outputs of every layer but the last, in training mode only (a warning
        with ``num_layers=1``, where it does nothing).
    bidirectional : bool, default False
        Add a reverse direction to every layer (the ``*_reverse`` parameters); the outputs
        of the two directions are concatenated.
    proj_size : int, default 0
        With ``0 < proj_size < hidden_size``, each layer projects its hidden state to
        ``proj_size`` features (``weight_hr_l{k}``, as torch's): h, the outputs and
        ``h_0`` / ``h_n`` have ``proj_size`` features, c keeps ``hidden_size``.
    device, dtype : optional
        Of the parameters, as for any torch module.
    backend : {None, "c", "triton", "numpy"}, optional
        As for `seqcore.lstm` (None picks ``"triton"`` for CUDA tensors, ``"c"`` for CPU
        ones).

    Attributes
    ----------
    weight_ih_l{k}, weight_hh_l{k} : torch.nn.Parameter
        Layer ``k``'s weights, ``(4*H, I)`` (``(4*H, D*H)`` for ``k > 0``) and
        ``(4*H, H)``, gates ``i, f, g, o``; ``weight_ih_l{k}_reverse``, ... for the reverse
        direction.
    bias_ih_l{k}, bias_hh_l{k} : torch.nn.Parameter
        ``(4*H,)`` each, with ``bias=True``.

    Raises
    ------
    ValueError
        Sizes that are not positive ints, ``proj_size`` outside ``[0, hidden_size)``, or
        dropout outside [0, 1].

    Notes
    -----
    Every weight and bias is initialized uniform in ``+-1/sqrt(hidden_size)``, as torch does.
    Each layer and direction is one `seqcore.lstm` call (the reverse direction with
    ``reverse=True``, and the lengths of a ``PackedSequence`` so that padding is never read);
    gradients flow through seqcore's kernels.

    Examples
    --------
    >>> import torch, seqcore.nn
    >>> ref = torch.nn.LSTM(32, 64, num_layers=2, bidirectional=True)
    >>> lstm = seqcore.nn.LSTM(32, 64, num_layers=2, bidirectional=True)
    >>> lstm.load_state_dict(ref.state_dict())
    <All keys matched successfully>
    >>> out, (h_n, c_n) = lstm(torch.randn(50, 4, 32))
    >>> out.shape, h_n.shape
    (torch.Size([50, 4, 128]), torch.Size([4, 4, 64]))
    """

    mode = "LSTM"
    _gates = 4
    _has_cell = True

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None,
                 backend=None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, device=device, dtype=dtype, backend=backend,
                         proj_size=proj_size)


class GRU(_RNNBase):
    """torch.nn.GRU on `seqcore.gru`: same arguments, parameters, init and outputs.

    A drop-in replacement for ``torch.nn.GRU``: the same constructor, attributes, parameter
    names (``weight_ih_l{k}{_reverse}``, ...), initialization and outputs, so a
    ``state_dict`` moves between the two in both directions.

    Parameters
    ----------
    input_size : int
        Features of the input, ``I``.
    hidden_size : int
        Features of the hidden state, ``H``.
    num_layers : int, default 1
        Stacked layers; layer ``k > 0`` takes the previous layer's output, ``D * H``
        features (``D = 2`` if bidirectional, else 1).
    bias : bool, default True
        Whether each layer has ``bias_ih_l{k}`` and ``bias_hh_l{k}``.
    batch_first : bool, default False
        Input and output are ``(B, T, .)`` instead of ``(T, B, .)`` (the states are not).
    dropout : float, default 0.0
        Dropout on the outputs of every layer but the last, in training mode only (a warning
        with ``num_layers=1``, where it does nothing).
    bidirectional : bool, default False
        Add a reverse direction to every layer (the ``*_reverse`` parameters); the outputs
        of the two directions are concatenated.
    device, dtype : optional
        Of the parameters, as for any torch module.
    backend : {None, "c", "triton", "numpy"}, optional
        As for `seqcore.gru` (None picks ``"triton"`` for CUDA tensors, ``"c"`` for CPU
        ones).

    Attributes
    ----------
    weight_ih_l{k}, weight_hh_l{k} : torch.nn.Parameter
        Layer ``k``'s weights, ``(3*H, I)`` (``(3*H, D*H)`` for ``k > 0``) and
        ``(3*H, H)``, gates ``r, z, n``; ``weight_ih_l{k}_reverse``, ... for the reverse
        direction.
    bias_ih_l{k}, bias_hh_l{k} : torch.nn.Parameter
        ``(3*H,)`` each, with ``bias=True``.

    Raises
    ------
    ValueError
        Sizes that are not positive ints, or dropout outside [0, 1].

    Notes
    -----
    Every weight and bias is initialized uniform in ``+-1/sqrt(hidden_size)``, as torch does.
    Each layer and direction is one `seqcore.gru` call (the reverse direction with
    ``reverse=True``, and the lengths of a ``PackedSequence`` so that padding is never read);
    gradients flow through seqcore's kernels.

    Examples
    --------
    >>> import torch, seqcore.nn
    >>> gru = seqcore.nn.GRU(32, 64, batch_first=True)
    >>> out, h_n = gru(torch.randn(4, 50, 32))
    >>> out.shape, h_n.shape
    (torch.Size([4, 50, 64]), torch.Size([1, 4, 64]))
    """

    mode = "GRU"
    _gates = 3
    _has_cell = False

    def __init__(self, *args, **kwargs):
        _refuse_projection(kwargs)
        super().__init__(*args, **kwargs)


class RNN(_RNNBase):
    """torch.nn.RNN (Elman, tanh or relu) on `seqcore.rnn`: same arguments, parameters, init
    and outputs.

    A drop-in replacement for ``torch.nn.RNN``: the same constructor (``nonlinearity`` is the
    fourth positional argument, as torch's), attributes, parameter names
    (``weight_ih_l{k}{_reverse}``, ...), initialization and outputs, so a ``state_dict``
    moves between the two in both directions.

    Parameters
    ----------
    input_size : int
        Features of the input, ``I``.
    hidden_size : int
        Features of the hidden state, ``H``.
    num_layers : int, default 1
        Stacked layers; layer ``k > 0`` takes the previous layer's output, ``D * H``
        features (``D = 2`` if bidirectional, else 1).
    nonlinearity : {"tanh", "relu"}, default "tanh"
        ``h' = act(x @ w_ih.T + b_ih + h @ w_hh.T + b_hh)``.
    bias : bool, default True
        Whether each layer has ``bias_ih_l{k}`` and ``bias_hh_l{k}``.
    batch_first : bool, default False
        Input and output are ``(B, T, .)`` instead of ``(T, B, .)`` (the states are not).
    dropout : float, default 0.0
        Dropout on the outputs of every layer but the last, in training mode only.
    bidirectional : bool, default False
        Add a reverse direction to every layer (the ``*_reverse`` parameters).
    device, dtype : optional
        Of the parameters, as for any torch module.
    backend : {None, "c", "triton", "numpy"}, optional
        As for `seqcore.rnn`.

    Attributes
    ----------
    weight_ih_l{k}, weight_hh_l{k} : torch.nn.Parameter
        Layer ``k``'s weights, ``(H, I)`` (``(H, D*H)`` for ``k > 0``) and ``(H, H)``.
    bias_ih_l{k}, bias_hh_l{k} : torch.nn.Parameter
        ``(H,)`` each, with ``bias=True``.

    Raises
    ------
    ValueError
        Sizes that are not positive ints, dropout outside [0, 1], or a nonlinearity other
        than "tanh" and "relu" (torch only fails at the first forward).

    Examples
    --------
    >>> import torch, seqcore.nn
    >>> rnn = seqcore.nn.RNN(16, 32, 2, "relu")
    >>> out, h_n = rnn(torch.randn(20, 3, 16))
    >>> out.shape, h_n.shape
    (torch.Size([20, 3, 32]), torch.Size([2, 3, 32]))
    """

    _gates = 1
    _has_cell = False

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None,
                 backend=None, **kwargs):
        _refuse_projection(kwargs)
        if kwargs:
            raise TypeError(f"RNN got unexpected keyword arguments {sorted(kwargs)}")
        _check_nonlinearity(nonlinearity)
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, device=device, dtype=dtype, backend=backend)

    @property
    def mode(self):
        return "RNN_TANH" if self.nonlinearity == "tanh" else "RNN_RELU"

    def extra_repr(self):
        s = super().extra_repr()
        return s + (", nonlinearity='relu'" if self.nonlinearity == "relu" else "")


# ----------------------------------------------------------------------------------------------
# Cells: one step per call, torch's RNNCellBase layout (weight_ih, weight_hh, bias_ih, bias_hh)


class _CellBase(nn.Module):
    """Shared by LSTMCell, GRUCell and RNNCell; subclasses set `_gates` and `_step` (one
    step of a one-state cell; LSTMCell has its own forward)."""

    _gates = 0

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None,
                 backend=None):
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(f"{type(self).__name__}: {name} must be an int >= 0, got "
                                 f"{value!r}")
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bool(bias)
        self.backend = backend
        factory = {"device": device, "dtype": dtype}
        rows = self._gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty((rows, input_size), **factory))
        self.weight_hh = nn.Parameter(torch.empty((rows, hidden_size), **factory))
        if self.bias:
            self.bias_ih = nn.Parameter(torch.empty(rows, **factory))
            self.bias_hh = nn.Parameter(torch.empty(rows, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self):
        """Every weight and bias uniform in ``+-1/sqrt(hidden_size)`` (torch's init)."""
        bound = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0.0
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += f", nonlinearity={self.nonlinearity}"
        if self.backend is not None:
            s += f", backend={self.backend!r}"
        return s

    def _batched(self, input):
        """(input as (B, I), unbatched) after torch's checks of a cell's input."""
        name = type(self).__name__
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"{name}: input must be a tensor, got {type(input).__name__}")
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D "
                             "instead")
        if input.shape[-1] != self.input_size:
            raise ValueError(f"{name}: input has inconsistent input_size: got "
                             f"{input.shape[-1]} expected {self.input_size}")
        return (input.unsqueeze(0), True) if input.dim() == 1 else (input, False)

    def _state(self, s, name, B, unbatched, like):
        """A state as (B, H): zeros when None, else checked against the input's batch."""
        if s is None:
            return torch.zeros(B, self.hidden_size, dtype=like.dtype, device=like.device)
        if not isinstance(s, torch.Tensor):
            raise TypeError(f"{type(self).__name__}: {name} must be a tensor, got "
                            f"{type(s).__name__}")
        want = (self.hidden_size,) if unbatched else (B, self.hidden_size)
        if tuple(s.shape) != want:
            raise ValueError(f"{type(self).__name__}: {name} must have shape {want}, got "
                             f"{tuple(s.shape)} (input batch {B})")
        return s.unsqueeze(0) if unbatched else s

    def _params(self):
        return self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh

    def forward(self, input, hx=None):
        """h' from input ``(B, I)`` (or unbatched ``(I,)``) and hx ``(B, H)`` (zeros when
        None); the same shape as hx. (LSTMCell takes and returns an (h, c) pair.)"""
        x, unbatched = self._batched(input)
        h = self._state(hx, "hx", x.shape[0], unbatched, x)
        h_new = self._step(x, h)
        return h_new.squeeze(0) if unbatched else h_new


class RNNCell(_CellBase):
    """torch.nn.RNNCell on `seqcore.rnn_cell`: ``h' = act(x @ w_ih.T + b_ih + h @ w_hh.T +
    b_hh)``, tanh or relu.

    Parameters
    ----------
    input_size, hidden_size : int
        ``I`` and ``H`` (``H = 0`` gives empty states, as torch's).
    bias : bool, default True
        Whether the cell has ``bias_ih`` and ``bias_hh``.
    nonlinearity : {"tanh", "relu"}, default "tanh"
    device, dtype : optional
        Of the parameters.
    backend : {None, "c", "triton", "numpy"}, optional
        As for `seqcore.rnn_cell`.

    Attributes
    ----------
    weight_ih : (H, I); weight_hh : (H, H); bias_ih, bias_hh : (H,)
        torch's names, so a ``state_dict`` moves between the two.

    Raises
    ------
    ValueError
        A nonlinearity other than "tanh" or "relu", negative sizes; at forward, input that is
        not 1-d or 2-d or of the wrong size, or a state of the wrong shape.

    Examples
    --------
    >>> import torch, seqcore.nn
    >>> cell = seqcore.nn.RNNCell(16, 32)
    >>> h = cell(torch.randn(3, 16))            # zeros as the initial state
    >>> h = cell(torch.randn(3, 16), h)
    >>> h.shape
    torch.Size([3, 32])
    """

    _gates = 1

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None,
                 dtype=None, backend=None):
        _check_nonlinearity(nonlinearity)
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype,
                         backend=backend)

    def _step(self, x, h):
        return seqcore.rnn_cell(x, h, *self._params(), nonlinearity=self.nonlinearity,
                                backend=self.backend)


class GRUCell(_CellBase):
    """torch.nn.GRUCell on `seqcore.gru_cell`.

    Parameters
    ----------
    input_size, hidden_size : int
        ``I`` and ``H`` (``H = 0`` gives empty states, as torch's).
    bias : bool, default True
        Whether the cell has ``bias_ih`` and ``bias_hh``.
    device, dtype : optional
        Of the parameters.
    backend : {None, "c", "triton", "numpy"}, optional
        As for `seqcore.gru_cell`.

    Attributes
    ----------
    weight_ih : (3*H, I); weight_hh : (3*H, H); bias_ih, bias_hh : (3*H,)
        torch's names and gate order ``r, z, n``.

    Raises
    ------
    ValueError
        Negative sizes; at forward, input that is not 1-d or 2-d or of the wrong size, or a
        state of the wrong shape.

    Examples
    --------
    >>> import torch, seqcore.nn
    >>> cell = seqcore.nn.GRUCell(16, 32)
    >>> cell(torch.randn(3, 16)).shape
    torch.Size([3, 32])
    """

    _gates = 3

    def _step(self, x, h):
        return seqcore.gru_cell(x, h, *self._params(), backend=self.backend)


class LSTMCell(_CellBase):
    """torch.nn.LSTMCell on `seqcore.lstm_cell`.

    Parameters
    ----------
    input_size, hidden_size : int
        ``I`` and ``H`` (``H = 0`` gives empty states, as torch's).
    bias : bool, default True
        Whether the cell has ``bias_ih`` and ``bias_hh``.
    device, dtype : optional
        Of the parameters.
    backend : {None, "c", "triton", "numpy"}, optional
        As for `seqcore.lstm_cell`.

    Attributes
    ----------
    weight_ih : (4*H, I); weight_hh : (4*H, H); bias_ih, bias_hh : (4*H,)
        torch's names and gate order ``i, f, g, o``.

    Raises
    ------
    TypeError
        hx that is not a pair of tensors.
    ValueError
        Negative sizes; at forward, input that is not 1-d or 2-d or of the wrong size, or
        states of the wrong shape.

    Examples
    --------
    >>> import torch, seqcore.nn
    >>> cell = seqcore.nn.LSTMCell(16, 32)
    >>> h, c = cell(torch.randn(3, 16))
    >>> h, c = cell(torch.randn(3, 16), (h, c))
    >>> h.shape, c.shape
    (torch.Size([3, 32]), torch.Size([3, 32]))
    """

    _gates = 4

    def forward(self, input, hx=None):
        """(h', c') from input ``(B, I)`` (or unbatched ``(I,)``) and hx = (h, c), each
        ``(B, H)`` (zeros when None)."""
        x, unbatched = self._batched(input)
        if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise TypeError("LSTMCell: hx must be a (h, c) pair of tensors, got "
                            f"{type(hx).__name__}")
        h0, c0 = (None, None) if hx is None else hx
        B = x.shape[0]
        h = self._state(h0, "h", B, unbatched, x)
        c = self._state(c0, "c", B, unbatched, x)
        h_new, c_new = seqcore.lstm_cell(x, h, c, *self._params(), backend=self.backend)
        return (h_new.squeeze(0), c_new.squeeze(0)) if unbatched else (h_new, c_new)


class MultiheadAttention(nn.Module):
    """torch.nn.MultiheadAttention on seqcore's kernels.

    A drop-in replacement: the same constructor, parameters (``in_proj_weight``, or
    ``q_proj_weight`` / ``k_proj_weight`` / ``v_proj_weight`` when kdim or vdim differ from
    embed_dim; ``in_proj_bias``, ``bias_k``, ``bias_v``, ``out_proj``), initialization,
    ``state_dict``, forward signature and return values; ``batch_first=False`` by default.

    Parameters
    ----------
    embed_dim : int
        Model width ``E``; a positive multiple of num_heads (head dim ``E // num_heads``).
    num_heads : int
        Attention heads.
    dropout : float, default 0.0
        Attention dropout on the weights in training mode, in the kernels (`attention`'s
        ``dropout_p``, a fresh seed per call from torch's generator); eval mode ignores it,
        as torch does. The weights returned with ``need_weights`` are the dropped ones, as
        torch's.
    bias : bool, default True
        Biases on the input and output projections.
    add_bias_kv : bool, default False
        Learned ``bias_k`` / ``bias_v`` rows appended to the keys and values.
    add_zero_attn : bool, default False
        A zero key and value appended.
    kdim, vdim : int, optional
        Feature sizes of key and value (default embed_dim).
    batch_first : bool, default False
        Inputs and output are ``(N, L, E)`` instead of ``(L, N, E)``.
    device, dtype : optional
        Of the parameters.
    window : (int, int), optional
        seqcore's extra, keyword-only: a ``(left, right)`` sliding-window band, bottom-right
        aligned, ``-1`` unbounded, as in `seqcore.attention`.
    softcap : float, optional
        seqcore's extra, keyword-only: score capping, as in `seqcore.attention`.
    backend : {None, "c", "triton", "numpy"}, optional
        As in `seqcore.attention`.

    Raises
    ------
    ValueError
        embed_dim not a positive multiple of num_heads.

    Examples
    --------
    >>> import torch, seqcore.nn
    >>> ref = torch.nn.MultiheadAttention(256, 8)
    >>> mha = seqcore.nn.MultiheadAttention(256, 8)
    >>> mha.load_state_dict(ref.state_dict())
    <All keys matched successfully>
    >>> x = torch.randn(100, 4, 256)                         # (L, N, E)
    >>> out, _ = mha(x, x, x, need_weights=False)
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False,
                 add_zero_attn=False, kdim=None, vdim=None, batch_first=False, device=None,
                 dtype=None, *, window=None, softcap=None, backend=None):
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0 or embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be a positive multiple of "
                             f"num_heads={num_heads}")
        factory = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.head_dim = embed_dim // num_heads
        self.batch_first, self.add_zero_attn = batch_first, add_zero_attn
        self.window, self.softcap, self.backend = window, softcap, backend
        if self._qkv_same_embed_dim:
            self.in_proj_weight = nn.Parameter(torch.empty((3 * embed_dim, embed_dim), **factory))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.q_proj_weight = nn.Parameter(torch.empty((embed_dim, embed_dim), **factory))
            self.k_proj_weight = nn.Parameter(torch.empty((embed_dim, self.kdim), **factory))
            self.v_proj_weight = nn.Parameter(torch.empty((embed_dim, self.vdim), **factory))
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim, **factory))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.modules.linear.NonDynamicallyQuantizableLinear(
            embed_dim, embed_dim, bias=bias, **factory)
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty((1, 1, embed_dim), **factory))
            self.bias_v = nn.Parameter(torch.empty((1, 1, embed_dim), **factory))
        else:
            self.bias_k = self.bias_v = None
        self._reset_parameters()

    def _reset_parameters(self):  # (torch's initialization)
        if self._qkv_same_embed_dim:
            nn.init.xavier_uniform_(self.in_proj_weight)
        else:
            for w in (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
                nn.init.xavier_uniform_(w)
        if self.in_proj_bias is not None:
            nn.init.constant_(self.in_proj_bias, 0.0)
            nn.init.constant_(self.out_proj.bias, 0.0)
        if self.bias_k is not None:
            nn.init.xavier_normal_(self.bias_k)
            nn.init.xavier_normal_(self.bias_v)

    def _projections(self, query, key, value):
        E = self.embed_dim
        b = [None] * 3 if self.in_proj_bias is None else self.in_proj_bias.split(E)
        if self._qkv_same_embed_dim:
            w = self.in_proj_weight.split(E)
        else:
            w = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)
        return [F.linear(x, wi, bi) for x, wi, bi in zip((query, key, value), w, b)]

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        """Attention of query over key / value, as ``torch.nn.MultiheadAttention.forward``.

        Parameters
        ----------
        query : torch.Tensor, shape (L, N, E)
            ``(N, L, E)`` with ``batch_first``, ``(L, E)`` unbatched.
        key : torch.Tensor, shape (S, N, kdim)
            Keys, in query's layout.
        value : torch.Tensor, shape (S, N, vdim)
            Values, in query's layout.
        key_padding_mask : torch.Tensor, shape (N, S), optional
            Boolean: True marks a key that may NOT be attended (unlike SDPA's masks);
            float: added to the scores.
        need_weights : bool, default True
            Also return the attention weights. They are computed by a separate softmax in
            torch ops, as torch's math path does (the output itself always comes from
            seqcore's kernel); pass False to skip that cost.
        attn_mask : torch.Tensor, shape (L, S) or (N * num_heads, L, S), optional
            Boolean (True: may NOT be attended) or float (added to the scores).
        average_attn_weights : bool, default True
            Average the returned weights over the heads.
        is_causal : bool, default False
            The hint that attn_mask is the causal mask: attn_mask must still be given (as
            torch requires); when the call allows it (no key_padding_mask, no weights
            needed, ``L == S``, no bias_kv or zero_attn) it runs as seqcore's causal band
            instead of reading the mask.

        Returns
        -------
        attn_output : torch.Tensor, shape (L, N, E)
            ``(N, L, E)`` with ``batch_first``, ``(L, E)`` unbatched.
        attn_weights : torch.Tensor or None
            ``(N, L, S)`` averaged over heads, or ``(N, num_heads, L, S)``; None unless
            need_weights.

        Raises
        ------
        ValueError
            Masks that do not cover the keys; dropout of 1.0 in training mode.
        RuntimeError
            is_causal without attn_mask.
        """
        dropout = self.dropout if self.training else 0.0
        # one seed for the kernels and for the weights returned (they show the same mask),
        # drawn as seqcore.attention draws one
        seed = check_dropout(dropout, None, "torch")[1] if dropout else None
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint (as torch)")
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = (x.unsqueeze(1) for x in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        L, N, _ = query.shape  # (time-major from here on, as torch's functional form)
        q, k, v = self._projections(query, key, value)
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.expand(1, N, -1)])
            v = torch.cat([v, self.bias_v.expand(1, N, -1)])
        H, d = self.num_heads, self.head_dim
        heads = lambda t: t.reshape(t.shape[0], N, H, d).permute(1, 2, 0, 3)  # noqa: E731
        q, k, v = heads(q), heads(k), heads(v)  # (N, H, L|S, d)
        if self.add_zero_attn:
            k, v = (torch.cat([t, t.new_zeros(N, H, 1, d)], dim=2) for t in (k, v))
        S = k.shape[2]
        bias = self._mask(attn_mask, key_padding_mask, N, L, S, q)
        causal = is_causal and key_padding_mask is None and not need_weights and L == S and \
            self.bias_k is None and not self.add_zero_attn
        if causal:
            bias = None  # the hint: attn_mask is the causal mask (L == S in self-attention)
        out = seqcore.attention(q, k, v, causal=causal, window=self.window, bias=bias,
                                softcap=self.softcap, dropout_p=dropout, dropout_seed=seed,
                                backend=self.backend)
        out = self.out_proj(out.permute(2, 0, 1, 3).reshape(L, N, H * d))
        weights = None
        if need_weights:
            weights = self._weights(q, k, bias, average_attn_weights, dropout, seed)
        if unbatched:
            return out.squeeze(1), None if weights is None else weights.squeeze(0)
        return (out.transpose(0, 1) if self.batch_first else out), weights

    def _mask(self, attn_mask, key_padding_mask, N, L, S, like):
        """One additive float mask, broadcastable to (N, H, L, S), or None."""
        def additive(m):
            if m.dtype == torch.bool:
                return torch.zeros(m.shape, dtype=like.dtype, device=like.device).masked_fill(
                    m, float("-inf"))
            return m.to(like.dtype)

        pad = 1 if self.bias_k is not None else 0
        pad += 1 if self.add_zero_attn else 0
        bias = None
        if attn_mask is not None:
            m = additive(attn_mask)
            if m.dim() == 3:  # (N * H, L, S)
                m = m.reshape(N, self.num_heads, *m.shape[1:])
            bias = F.pad(m, (0, pad)) if pad else m
        if key_padding_mask is not None:
            kpm = additive(key_padding_mask)
            kpm = (F.pad(kpm, (0, pad)) if pad else kpm)[:, None, None, :]
            bias = kpm if bias is None else bias + kpm
        if bias is not None and bias.shape[-1] != S:
            raise ValueError(f"attn_mask / key_padding_mask cover {bias.shape[-1]} keys, the "
                             f"attention has {S}")
        return bias

    def _weights(self, q, k, bias, average, dropout=0.0, seed=None):
        """The attention weights, by a plain softmax in torch ops (torch's math path), with
        the kernels' dropout mask (seqcore/reference/dropout.py) when dropout is on."""
        s = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        if self.softcap:
            s = self.softcap * torch.tanh(s / self.softcap)
        if bias is not None:
            s = s + bias
        if self.window is not None:
            L, S = s.shape[-2:]
            i, j = torch.arange(L)[:, None], torch.arange(S)[None, :]
            left, right = self.window
            off = S - L
            seen = torch.ones(L, S, dtype=torch.bool)
            if left >= 0:
                seen &= j >= i + off - left
            if right >= 0:
                seen &= j <= i + off + right
            s = s.masked_fill(~seen.to(s.device), float("-inf"))
        w = torch.softmax(s, dim=-1).nan_to_num(0.0)
        if dropout:
            from seqcore.reference.dropout import dropout_scale

            w = w * torch.from_numpy(dropout_scale(*w.shape, dropout, seed)).to(w)
        return w.mean(dim=1) if average else w


class MultiheadSelfAttention(nn.Module):
    """Self-attention over `seqcore.attention`: a fused qkv projection, attention, an
    output projection; grouped-query heads, and decoding with a `KVCache`.

    Parameters
    ----------
    embed_dim : int
        Model width; a multiple of num_heads, and ``head_dim = embed_dim // num_heads``.
    num_heads : int
        Query heads.
    num_kv_heads : int, optional
        Key / value heads (default num_heads), for grouped-query attention: it must divide
        num_heads, and query head ``h`` reads kv head ``h // (num_heads // num_kv_heads)``.
    bias : bool, default True
        Biases on both projections.
    causal : bool, default False
        Passed to `seqcore.attention` (bottom-right aligned).
    window : (int, int), optional
        Passed to `seqcore.attention`.
    softcap : float, optional
        Passed to `seqcore.attention`. The scale is ``1 / sqrt(head_dim)``.
    batch_first : bool, default True
        x is ``(B, S, embed_dim)``; ``(S, B, embed_dim)`` when False.
    device, dtype : optional
        Of the parameters.
    backend : {None, "c", "triton", "numpy"}, optional
        Passed to `seqcore.attention`.

    Attributes
    ----------
    qkv_proj : torch.nn.Linear
        ``nn.Linear(embed_dim, (num_heads + 2 * num_kv_heads) * head_dim)``, whose output
        rows are ``[q heads | k heads | v heads]``, each head head_dim wide.
    out_proj : torch.nn.Linear
        ``nn.Linear(num_heads * head_dim, embed_dim)``.

    Raises
    ------
    ValueError
        Sizes that are not positive ints, embed_dim not a multiple of num_heads, or
        num_heads not a multiple of num_kv_heads.

    Examples
    --------
    A generation loop:

    >>> attn = seqcore.nn.MultiheadSelfAttention(512, 8, num_kv_heads=2, causal=True)
    >>> cache = attn.new_cache(batch_size=B, max_seqlen=1024)
    >>> y = attn(prompt, cache=cache)        # prefill: (B, S_prompt, embed_dim)
    >>> for _ in range(steps):
    ...     y = attn(next_x, cache=cache)    # (B, 1, embed_dim), one token per sequence
    """

    def __init__(self, embed_dim, num_heads, num_kv_heads=None, bias=True, causal=False,
                 window=None, softcap=None, batch_first=True, device=None, dtype=None,
                 backend=None):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        for name, value in (("embed_dim", embed_dim), ("num_heads", num_heads),
                            ("num_kv_heads", num_kv_heads)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be a multiple of num_heads={num_heads}")
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads={num_heads} must be a multiple of "
                             f"num_kv_heads={num_kv_heads}")
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, num_kv_heads
        self.head_dim = embed_dim // num_heads
        self.causal, self.window, self.softcap = causal, window, softcap
        self.batch_first, self.backend = batch_first, backend
        factory = {"device": device, "dtype": dtype}
        qkv_width = (num_heads + 2 * num_kv_heads) * self.head_dim
        self.qkv_proj = nn.Linear(embed_dim, qkv_width, bias=bias, **factory)
        self.out_proj = nn.Linear(num_heads * self.head_dim, embed_dim, bias=bias, **factory)

    def extra_repr(self):
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"num_kv_heads={self.num_kv_heads}, causal={self.causal}, window={self.window}, "
                f"softcap={self.softcap}, batch_first={self.batch_first}, backend={self.backend!r}")

    def forward(self, x, attn_bias=None, key_padding_mask=None, cache=None):
        """Self-attention of x; y has x's shape.

        Parameters
        ----------
        x : torch.Tensor, shape (B, S, embed_dim)
            ``(S, B, embed_dim)`` when ``batch_first=False``.
        attn_bias : torch.Tensor, optional
            Float additive scores broadcastable to ``(B, num_heads, S, S)`` (ALiBi, or a
            mask holding ``-inf`` where attention is not allowed). Boolean masks are refused,
            since torch uses opposite conventions for them in SDPA and
            nn.MultiheadAttention.
        key_padding_mask : torch.Tensor, shape (B, S), optional
            Boolean: True marks a padding key that no query may see, as in
            nn.MultiheadAttention; float: added to the scores as is.
        cache : KVCache, optional
            For decoding (see `new_cache`): x holds each sequence's next S tokens; their keys
            and values are appended to the cache and the queries attend over everything the
            cache holds (`seqcore.attention_with_kvcache`; causal and window are relative to
            each sequence's end). No attn_bias or key_padding_mask then.

        Returns
        -------
        y : torch.Tensor
            The same shape as x. A query that sees no key at all outputs out_proj's bias (its
            attention output is zero). Unlike nn.MultiheadAttention, no attention weights
            are returned.

        Raises
        ------
        ValueError
            x of the wrong shape, a key_padding_mask that is not (B, S), or masks together
            with a cache.
        TypeError
            A boolean attn_bias.
        """
        if x.dim() != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"x must be (B, S, {self.embed_dim}) ((S, B, {self.embed_dim}) "
                             f"when batch_first=False), got {tuple(x.shape)}")
        if not self.batch_first:
            x = x.transpose(0, 1)
        B, S, _ = x.shape
        q, k, v = self._heads(self.qkv_proj(x), B, S)
        options = dict(causal=self.causal, window=self.window, softcap=self.softcap,
                       backend=self.backend)
        if cache is not None:
            if attn_bias is not None or key_padding_mask is not None:
                raise ValueError("attn_bias and key_padding_mask are not taken with a cache")
            out = cache.attend(q, k, v, **options)
        else:
            bias = self._scores_bias(attn_bias, key_padding_mask, B, S, x)
            out = seqcore.attention(q, k, v, bias=bias, **options)
        y = self.out_proj(out.transpose(1, 2).reshape(B, S, self.num_heads * self.head_dim))
        return y if self.batch_first else y.transpose(0, 1)

    def new_cache(self, batch_size, max_seqlen, *, block_size=None, num_blocks=None):
        """An empty `KVCache` for this module's kv heads, head dim, dtype and device.

        Parameters
        ----------
        batch_size, max_seqlen : int
            Sequences decoded together, and the most tokens each may hold.
        block_size, num_blocks : int, optional
            A paged cache, as in `KVCache`; dense when block_size is None.

        Returns
        -------
        KVCache
        """
        w = self.qkv_proj.weight
        return KVCache(batch_size, self.num_kv_heads, self.head_dim, max_seqlen,
                       block_size=block_size, num_blocks=num_blocks, dtype=w.dtype,
                       device=w.device)

    def _heads(self, qkv, B, S):
        """q (B, Hq, S, head_dim), k and v (B, Hkv, S, head_dim) from the fused projection."""
        d = self.head_dim
        q, k, v = qkv.split([self.num_heads * d, self.num_kv_heads * d, self.num_kv_heads * d], -1)
        split = lambda t: t.reshape(B, S, -1, d).transpose(1, 2)  # noqa: E731
        return split(q), split(k), split(v)

    def _scores_bias(self, attn_bias, key_padding_mask, B, S, x):
        bias = None
        if attn_bias is not None:
            if attn_bias.dtype == torch.bool:
                raise TypeError("attn_bias must be a float tensor of additive scores (use -inf "
                                "to mask); boolean masks are not accepted")
            bias = attn_bias
        if key_padding_mask is not None:
            if tuple(key_padding_mask.shape) != (B, S):
                raise ValueError(f"key_padding_mask must have shape (B, S) = {(B, S)}, got "
                                 f"{tuple(key_padding_mask.shape)}")
            if key_padding_mask.dtype == torch.bool:
                pad = torch.zeros((B, S), dtype=x.dtype, device=x.device)
                pad = pad.masked_fill(key_padding_mask, float("-inf"))
            else:
                pad = key_padding_mask.to(x.dtype)
            pad = pad[:, None, None, :]
            bias = pad if bias is None else bias + pad
        return bias


class KVCache:
    """The keys and values of a batch of sequences being decoded, kept between calls.

    Dense or paged; `attend` appends new keys and values and attends over everything held
    (`seqcore.attention_with_kvcache`). Inference only: no gradients flow through the cache.

    Parameters
    ----------
    batch_size : int
        Sequences decoded together.
    num_kv_heads : int
        Key / value heads.
    head_dim : int
        Key head dim (and value head dim unless head_dim_v).
    max_seqlen : int
        The most tokens one sequence may hold.
    block_size : int, optional
        None: a dense cache. Else a paged one, with blocks of block_size tokens (a positive
        multiple of 16).
    num_blocks : int, optional
        Paged: blocks in the pool shared by the batch (default: enough for every sequence
        to reach max_seqlen).
    head_dim_v : int, optional
        Value head dim (default head_dim).
    dtype : torch.dtype, default torch.float32
    device : torch.device or str, optional

    Attributes
    ----------
    k, v : torch.Tensor
        Dense: ``(batch_size, num_kv_heads, max_seqlen, head_dim)`` (``head_dim_v`` for v).
        Paged: ``(num_blocks, num_kv_heads, block_size, head_dim)``, a pool of blocks.
    block_table : torch.Tensor or None
        Paged: int32 ``(batch_size, ceil(max_seqlen / block_size))``, mapping each
        sequence's positions to blocks, which are taken from the pool as the sequence grows
        and given back by `reset`. None for a dense cache.
    seqlens : torch.Tensor
        int32 ``(batch_size,)``: the tokens each sequence holds.

    Raises
    ------
    ValueError
        Sizes that are not positive ints, or a block_size that is not a positive multiple of
        16.
    """

    def __init__(self, batch_size, num_kv_heads, head_dim, max_seqlen, *, block_size=None,
                 num_blocks=None, head_dim_v=None, dtype=torch.float32, device=None):
        for name, value in (("batch_size", batch_size), ("num_kv_heads", num_kv_heads),
                            ("head_dim", head_dim), ("max_seqlen", max_seqlen)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        head_dim_v = head_dim if head_dim_v is None else head_dim_v
        self.block_size = block_size
        if block_size is None:
            shape = (batch_size, num_kv_heads, max_seqlen)
            self.block_table = None
        else:
            if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral) or \
                    block_size <= 0 or block_size % 16:
                raise ValueError(f"block_size must be a positive multiple of 16, got {block_size!r}")
            per_seq = -(-max_seqlen // block_size)
            num_blocks = batch_size * per_seq if num_blocks is None else num_blocks
            shape = (num_blocks, num_kv_heads, block_size)
            self.block_table = torch.zeros((batch_size, per_seq), dtype=torch.int32, device=device)
            self._free = list(range(num_blocks - 1, -1, -1))  # a stack: block 0 is taken first
            self._held = [[] for _ in range(batch_size)]
        self.max_seqlen = max_seqlen
        self.k = torch.zeros(shape + (head_dim,), dtype=dtype, device=device)
        self.v = torch.zeros(shape + (head_dim_v,), dtype=dtype, device=device)
        self.seqlens = torch.zeros(batch_size, dtype=torch.int32, device=device)
        self._lens = [0] * batch_size  # (on the host: no device sync to plan the blocks)

    def reset(self, batch_index=None):
        """Empty every sequence (or one), giving its blocks back to the pool.

        Parameters
        ----------
        batch_index : int, optional
            The sequence to empty; all of them when None.
        """
        for b in range(len(self._lens)) if batch_index is None else [batch_index]:
            self._lens[b] = 0
            if self.block_size is not None:
                self._free.extend(reversed(self._held[b]))
                self._held[b] = []
        self.seqlens.copy_(torch.tensor(self._lens, dtype=torch.int32))

    def _reserve(self, S_new):
        """Blocks for S_new more tokens of every sequence (paged), or ValueError when full."""
        for b, n in enumerate(self._lens):
            if n + S_new > self.max_seqlen:
                raise ValueError(f"sequence {b} holds {n} tokens; {S_new} more pass max_seqlen="
                                 f"{self.max_seqlen}")
            if self.block_size is None:
                continue
            need = -(-(n + S_new) // self.block_size) - len(self._held[b])
            if need > len(self._free):
                raise ValueError(f"the cache's {self.k.shape[0]} blocks are all taken; pass a "
                                 f"larger num_blocks or reset() finished sequences")
            for _ in range(need):
                block = self._free.pop()
                self.block_table[b, len(self._held[b])] = block
                self._held[b].append(block)

    def attend(self, q, k_new, v_new, **options):
        """Append k_new / v_new at each sequence's end and attend q over all it holds.

        Parameters
        ----------
        q : torch.Tensor, shape (batch_size, Hq, Sq, head_dim)
            Queries (Hq a multiple of num_kv_heads).
        k_new : torch.Tensor, shape (batch_size, num_kv_heads, S_new, head_dim)
            New keys, written at each sequence's end (detached).
        v_new : torch.Tensor, shape (batch_size, num_kv_heads, S_new, head_dim_v)
            New values.
        **options
            ``causal``, ``window``, ``softcap``, ``scale``, ``backend``: as in
            `seqcore.attention_with_kvcache` (relative to each sequence's end).

        Returns
        -------
        out : torch.Tensor, shape (batch_size, Hq, Sq, head_dim_v)
            seqlens has advanced by S_new. No gradients.

        Raises
        ------
        ValueError
            A sequence would pass max_seqlen, or the pool has no free block left (pass a
            larger num_blocks or `reset` finished sequences).
        """
        S_new = k_new.shape[2]
        self._reserve(S_new)
        with torch.no_grad():
            out = seqcore.attention_with_kvcache(
                q, self.k, self.v, k_new.detach(), v_new.detach(), cache_seqlens=self.seqlens,
                block_table=self.block_table, **options)
        self._lens = [n + S_new for n in self._lens]
        self.seqlens += S_new
        return out
