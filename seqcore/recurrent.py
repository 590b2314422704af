"""seqcore.lstm, gru, rnn and their cells (lstm_cell, gru_cell, rnn_cell): validation and
dispatch.

Cells are sequences of length 1, so every backend implements just lstm_fwd/gru_fwd/rnn_fwd
(and their backwards); see seqcore/_problem.py for the interface. The Elman RNN is the cell
"rnn_tanh" or "rnn_relu" here, one family ("rnn", a nonlinearity argument) in the backends.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np

from seqcore import _dlpack
from seqcore import _arrays, _backends, _c, _c_recurrent
from seqcore import _validate as V
from seqcore.attention import Array

# Gate rows of w_ih / w_hh per hidden unit, and the name the messages use, of each cell.
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
_TITLE = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN (tanh)", "rnn_relu": "RNN (relu)"}


# The backends whose lstm_fwd / lstm_bwd take w_hr (the projection, torch's proj_size).
PROJ_BACKENDS = {"numpy", "triton", "c"}


def _elman_cell(nonlinearity):
    """The cell name of an Elman RNN with this nonlinearity ("tanh" or "relu", as torch)."""
    if nonlinearity not in ("tanh", "relu") or not isinstance(nonlinearity, str):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    return "rnn_" + nonlinearity


def _check_projection(w_hr, w_hh):
    """(H, P) of an LSTM with projection: w_hr (P, H), 0 < P < H, as torch's proj_size."""
    if w_hr.ndim != 2:
        V.require_ndim("w_hr", w_hr, (2,), "(proj_size, H)")
    P, H = _arrays.shape(w_hr)
    if not 0 < P < H:
        raise ValueError(f"w_hr must have shape (proj_size, H) with 0 < proj_size < H (as "
                         f"torch's proj_size), got {_arrays.shape(w_hr)}")
    if w_hh.ndim == 2 and _arrays.shape(w_hh) != (4 * H, P):
        raise ValueError(f"with w_hr {_arrays.shape(w_hr)}, w_hh must have shape (4*H, "
                         f"proj_size) = {(4 * H, P)}, got {_arrays.shape(w_hh)}")
    return H, P


def _check_weights(cell, w_ih, w_hh, b_ih, b_hh, I, w_hr=None):
    """(H, P): hidden size H from the weights, checking the PyTorch layout (G*H, I),
    (G*H, P), (G*H,); P = H, or the projection's size with w_hr (LSTM only)."""
    G = GATES[cell]
    rows = f"{G}*H" if G > 1 else "H"
    if w_ih.ndim != 2:
        V.require_ndim("w_ih", w_ih, (2,), f"({rows}, input_size)")
    if w_hh.ndim != 2:
        V.require_ndim("w_hh", w_hh, (2,), f"({rows}, H)")
    if w_hr is not None:
        H, P = _check_projection(w_hr, w_hh)
    else:
        GH, H = _arrays.shape(w_hh)
        P = H
        if GH != G * H:  # (H = 0 is allowed, as torch allows it: empty states and outputs)
            raise ValueError(f"w_hh must have shape ({rows}, H) for {_TITLE[cell]}, got "
                             f"{_arrays.shape(w_hh)}")
    if _arrays.shape(w_ih) != (G * H, I):
        raise ValueError(f"w_ih must have shape ({rows}, input_size) = {(G * H, I)}, got "
                         f"{_arrays.shape(w_ih)} (x has input_size {I}, w_hh gives H = {H})")
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None and _arrays.shape(b) != (G * H,):
            raise ValueError(f"{name} must have shape ({G * H},), got {_arrays.shape(b)}")
    if I < 1:
        raise ValueError(f"input_size must be >= 1, got {I}")
    return H, P


def _check_state(name, s, B, H):
    if s is not None:
        if _arrays.shape(s) != (B, H):
            raise ValueError(f"{name} must have shape (batch, hidden) = {(B, H)}, got {_arrays.shape(s)}")


def _check_lengths(lengths, B, T, like):
    if lengths is None:
        return None
    if _arrays.kind_of(lengths) is None and not isinstance(lengths, (list, tuple)):
        raise TypeError(f"lengths must be a sequence of ints, an array or a tensor, got {type(lengths).__name__}")
    if _arrays.is_tensor(lengths):
        # its values are checked once, by the torch op when it runs (seqcore/_torch.py): also
        # under torch.compile, whose tracer cannot read them here
        if tuple(lengths.shape) != (B,):
            raise ValueError(f"lengths must have shape (batch,) = {(B,)}, got {tuple(lengths.shape)}")
        return _arrays.as_index_array(lengths, "lengths", like)
    host = _arrays.to_host_numpy(lengths) if _arrays.kind_of(lengths) else np.asarray(lengths)
    if host.dtype.kind not in "iu":
        raise TypeError(f"lengths must hold integers, got dtype {host.dtype}")
    if host.shape != (B,):
        raise ValueError(f"lengths must have shape (batch,) = {(B,)}, got {host.shape}")
    V.check_lengths_values(host, T)
    return _arrays.as_index_array(lengths, "lengths", like)


def _prepare(cell, x, w_ih, w_hh, b_ih, b_hh, states, lengths, batch_first, backend, seq,
             w_hr=None):
    """Validate; return (kind, backend, dtype, arrays in compute dtype, lengths). states:
    [(name, array or None)]; with w_hr (an LSTM's projection) the hidden states ("h0", "h")
    have its P features and the cell state H."""
    if w_hr is not None:  # (last, so states keep their place in the lists below)
        states = states + [("w_hr", w_hr)]
    named = [("x", x), ("w_ih", w_ih), ("w_hh", w_hh), ("b_ih", b_ih), ("b_hh", b_hh)] + states
    # (ordered so that a NumPy call costs a few us: a cell is one step of a stream)
    given = [a for _, a in named if a is not None]
    numpy_only = all(type(a) is np.ndarray for a in given)
    if not numpy_only:  # under torch.autocast, every float input in its lower precision
        cast = _arrays.autocast_inputs(*(a for _, a in named))
        named = [(n, a) for (n, _), a in zip(named, cast)]
        (x, w_ih, w_hh, b_ih, b_hh), states = cast[:5], named[5:]
        given = [a for _, a in named if a is not None]
    kind = _arrays.NUMPY if numpy_only else _arrays.common_kind(named)
    if seq:
        V.require_ndim("x", x, (3,), "(B, T, input_size)" if batch_first else "(T, B, input_size)")
        T, B, I = _arrays.shape(x)
        if batch_first:
            B, T = T, B
    else:
        V.require_ndim("x", x, (2,), "(B, input_size)")
        (B, I), T = _arrays.shape(x), 1
    if not numpy_only:  # NumPy arrays are all on the host
        V.require_same_device(named)
    dt0 = given[0].dtype
    dtype = _arrays.dtype_name(x) if all(a.dtype == dt0 for a in given) else \
        V.require_same_dtype(named)
    V.require_float("x", x)
    if w_hr is not None:
        w_hr = states.pop()[1]  # (autocast may have cast it)
        if cell != "lstm":
            raise TypeError(f"w_hr (a projection) is an LSTM's only, not {_TITLE[cell]}'s")
    H, P = _check_weights(cell, w_ih, w_hh, b_ih, b_hh, I, w_hr)
    widths = {name: (P if name in ("h0", "h") else H) for name, _ in states}
    for name, s in states:
        _check_state(name, s, B, widths[name])
    lengths = _check_lengths(lengths, B, T, x)
    backend = _backends.pick(kind, _arrays.device_type(x), backend)
    _backends.check_dtype("x", x, backend)
    cdt = _backends.compute_dtype(backend, dtype)
    G = GATES[cell]

    def prep(a, shape_):
        if a is None:
            return _arrays.zeros_like_kind(x, shape_, cdt)
        if type(a) is np.ndarray and a.dtype == cdt and a.flags.c_contiguous:
            return a
        return _arrays.contiguous(_arrays.astype(a, cdt))

    if seq and batch_first:
        x = x.transpose(0, 1) if _arrays.is_tensor(x) else x.transpose(1, 0, 2)
    xs = prep(x, None) if seq else _arrays.reshape(prep(x, None), (1, B, I))
    arrays = dict(x=xs, w_ih=prep(w_ih, None), w_hh=prep(w_hh, None),
                  b_ih=prep(b_ih, (G * H,)), b_hh=prep(b_hh, (G * H,)))
    for name, s in states:
        arrays[name] = prep(s, (B, widths[name]))
    if w_hr is not None:
        arrays["w_hr"] = prep(w_hr, None)
    return kind, backend, dtype, arrays, lengths


def _run(cell, kind, backend, a, lengths, reverse):
    """(y, h_n[, c_n]) of one layer on the chosen backend; a: the arrays of _prepare."""
    if a["w_hh"].shape[0] == 0:  # hidden_size 0: nothing to compute on any backend
        T, B = a["x"].shape[:2]
        empty = [_arrays.zeros_like_kind(a["x"], shape, _arrays.dtype_name(a["x"]))
                 for shape in ((T, B, 0), (B, 0), (B, 0))]
        return tuple(empty) if cell == "lstm" else tuple(empty[:2])
    elman = cell.startswith("rnn_")
    if kind == _arrays.TORCH:
        from seqcore import _torch

        if elman:
            return _torch.rnn(**a, nonlinearity=cell[4:], lengths=lengths, reverse=reverse,
                              backend=backend)
        fn = _torch.lstm if cell == "lstm" else _torch.gru
        return fn(**a, lengths=lengths, reverse=reverse, backend=backend)
    mod = _backends.module(backend, "recurrent")
    weights = (a["x"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"])
    if cell == "lstm":
        proj = {"w_hr": a["w_hr"]} if "w_hr" in a else {}  # (backends without it: no kwarg)
        if proj and backend not in PROJ_BACKENDS:
            raise NotImplementedError(f"the LSTM projection (w_hr, proj_size) is not in the "
                                      f"{backend!r} kernels yet: use backend='numpy'")
        y, h_n, c_n, _ = mod.lstm_fwd(*weights, a["h0"], a["c0"], lengths, reverse, False,
                                      **proj)
        return y, h_n, c_n
    if elman:
        y, h_n, _ = mod.rnn_fwd(*weights, a["h0"], lengths, reverse, cell[4:], False)
    else:
        y, h_n, _ = mod.gru_fwd(*weights, a["h0"], lengths, reverse, False)
    return y, h_n


def _seq_out(y, dtype, batch_first):
    y = _arrays.astype(y, dtype)
    if batch_first:
        y = y.transpose(0, 1) if _arrays.is_tensor(y) else y.transpose(1, 0, 2)
        y = _arrays.contiguous(y)
    return y


@_dlpack.accepts_dlpack
def lstm(x: Array, w_ih: Array, w_hh: Array, b_ih: Optional[Array] = None,
         b_hh: Optional[Array] = None, h0: Optional[Array] = None,
         c0: Optional[Array] = None, *, w_hr: Optional[Array] = None,
         lengths: Union[Array, Sequence[int], None] = None, reverse: bool = False,
         batch_first: bool = False,
         backend: Optional[str] = None) -> Tuple[Array, Tuple[Array, Array]]:
    """One LSTM layer (one direction) over a whole sequence, in one fused call.

    Parameters
    ----------
    x : array, shape (T, B, I)
        Input sequence; ``(B, T, I)`` with `batch_first`.
    w_ih : array, shape (4*H, I)
        Input-to-hidden weights, gates ``i, f, g, o`` stacked in that order.
    w_hh : array, shape (4*H, H)
        Hidden-to-hidden weights; H is read from this shape (``(4*H, P)`` with `w_hr`).
    b_ih, b_hh : array, shape (4*H,), optional
        Biases; zeros when None.
    h0, c0 : array, shape (B, H), optional
        Initial hidden and cell states; zeros when None (with `w_hr`, h0 is ``(B, P)``).
    w_hr : array, shape (P, H), optional
        A projection of the hidden state (torch's ``proj_size`` = P, ``0 < P < H``,
        ``weight_hr_l{k}``): ``h' = (o * tanh(c')) @ w_hr.T``, so h, y and w_hh's columns
        have P features while c keeps H.
    lengths : sequence of int or integer array, shape (B,), optional
        Valid steps of each batch element, ``0 <= lengths[b] <= T``: element ``b`` runs only
        its first ``lengths[b]`` steps (with `reverse`, steps ``lengths[b] - 1`` down to 0);
        ``y`` is zero past them and the final states are those after its last valid step
        (the initial ones for length 0), as ``torch.nn.LSTM`` gives on a packed sequence.
        A list, a NumPy array, or a tensor (int32 / int64) of x's kind.
    reverse : bool, default False
        Run from the last step to the first (the backward direction of a bidirectional
        layer); ``y[t]`` is still the output at step ``t``.
    batch_first : bool, default False
        x and y are ``(B, T, .)`` instead of ``(T, B, .)``.
    backend : {None, "c", "triton", "numpy"}, optional
        As in `attention`: None picks ``"triton"`` for CUDA tensors and ``"c"`` for NumPy
        arrays and CPU tensors; ``"numpy"`` runs the float64 reference.

    Returns
    -------
    y : array, shape (T, B, H)
        The hidden state at every step (``(B, T, H)`` with `batch_first`; P features with
        `w_hr`), in x's dtype.
    (h_n, c_n) : pair of arrays, shape (B, H)
        The final hidden and cell states (h_n ``(B, P)`` with `w_hr`).

    Raises
    ------
    TypeError
        Mixed array kinds or dtypes, unsupported dtypes, non-bool flags, or lengths that
        are not integers.
    ValueError
        Shapes that do not fit the layout (the message names the argument and the shapes
        seen), lengths outside [0, T], or inputs on different devices. Checked before any
        kernel runs.
    RuntimeError
        The requested backend is unavailable here.

    Notes
    -----
    PyTorch's gate order and weight layout, so the weights of one layer of ``torch.nn.LSTM``
    (``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``) load as
    they are. Gates ``i, f, g, o``: ``i, f, o = sigmoid(.)`` and ``g = tanh(.)`` of
    their rows of ``x @ w_ih.T + b_ih + h @ w_hh.T + b_hh``; ``c' = f * c + i * g``,
    ``h' = o * tanh(c')``.

    dtypes: float32 and float64 on the CPU, and float16 (and, for tensors, bfloat16) there
    too, computed in float32 by the C kernels and returned in the input dtype; float16,
    bfloat16 and float32 on CUDA (``"triton"``). All arrays of a call share one dtype, kind
    and device. torch tensors that require grad get gradients for every input (x, the
    weights and biases, the initial states) from the same backend's kernels; the op is
    registered with ``torch.library``, so ``torch.compile(fullgraph=True)`` traces it.

    Examples
    --------
    >>> import numpy as np, seqcore
    >>> T, B, I, H = 50, 4, 32, 64
    >>> x = np.random.randn(T, B, I).astype(np.float32)
    >>> w_ih = np.random.randn(4 * H, I).astype(np.float32) * 0.1
    >>> w_hh = np.random.randn(4 * H, H).astype(np.float32) * 0.1
    >>> y, (h_n, c_n) = seqcore.lstm(x, w_ih, w_hh, lengths=[50, 20, 1, 0])
    >>> y.shape, h_n.shape
    ((50, 4, 64), (4, 64))
    """
    if type(x) is not np.ndarray:
        host = _arrays.host_views(backend, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, w_hr)
        if host is not None:  # CPU tensors, no autograd: the NumPy path (_arrays.host_views)
            y, (h_n, c_n) = lstm(*host[:7], w_hr=host[8], lengths=host[7], reverse=reverse,
                                 batch_first=batch_first, backend=backend)
            return _arrays.host_results(y), _arrays.host_results((h_n, c_n))
    V.require_bool("reverse", reverse)
    V.require_bool("batch_first", batch_first)
    kind, backend, dtype, a, lengths = _prepare(
        "lstm", x, w_ih, w_hh, b_ih, b_hh, [("h0", h0), ("c0", c0)], lengths, batch_first,
        backend, True, w_hr)
    y, h_n, c_n = _run("lstm", kind, backend, a, lengths, reverse)
    return _seq_out(y, dtype, batch_first), (_arrays.astype(h_n, dtype), _arrays.astype(c_n, dtype))


@_dlpack.accepts_dlpack
def gru(x: Array, w_ih: Array, w_hh: Array, b_ih: Optional[Array] = None,
        b_hh: Optional[Array] = None, h0: Optional[Array] = None, *,
        lengths: Union[Array, Sequence[int], None] = None, reverse: bool = False,
        batch_first: bool = False, backend: Optional[str] = None) -> Tuple[Array, Array]:
    """One GRU layer (one direction) over a whole sequence, in one fused call.

    Parameters
    ----------
    x : array, shape (T, B, I)
        Input sequence; ``(B, T, I)`` with `batch_first`.
    w_ih : array, shape (3*H, I)
        Input-to-hidden weights, gates ``r, z, n`` stacked in that order.
    w_hh : array, shape (3*H, H)
        Hidden-to-hidden weights; H is read from this shape.
    b_ih, b_hh : array, shape (3*H,), optional
        Biases; zeros when None.
    h0 : array, shape (B, H), optional
        Initial hidden state; zeros when None.
    lengths : sequence of int or integer array, shape (B,), optional
        Valid steps of each batch element, ``0 <= lengths[b] <= T``: element ``b`` runs only
        its first ``lengths[b]`` steps (with `reverse`, steps ``lengths[b] - 1`` down to 0);
        ``y`` is zero past them and the final states are those after its last valid step
        (the initial ones for length 0), as ``torch.nn.GRU`` gives on a packed sequence.
        A list, a NumPy array, or a tensor (int32 / int64) of x's kind.
    reverse : bool, default False
        Run from the last step to the first (the backward direction of a bidirectional
        layer); ``y[t]`` is still the output at step ``t``.
    batch_first : bool, default False
        x and y are ``(B, T, .)`` instead of ``(T, B, .)``.
    backend : {None, "c", "triton", "numpy"}, optional
        As in `attention`: None picks ``"triton"`` for CUDA tensors and ``"c"`` for NumPy
        arrays and CPU tensors; ``"numpy"`` runs the float64 reference.

    Returns
    -------
    y : array, shape (T, B, H)
        The hidden state at every step (``(B, T, H)`` with `batch_first`), in x's dtype.
    h_n : array, shape (B, H)
        The final hidden state.

    Raises
    ------
    TypeError
        Mixed array kinds or dtypes, unsupported dtypes, non-bool flags, or lengths that
        are not integers.
    ValueError
        Shapes that do not fit the layout (the message names the argument and the shapes
        seen), lengths outside [0, T], or inputs on different devices. Checked before any
        kernel runs.
    RuntimeError
        The requested backend is unavailable here.

    Notes
    -----
    PyTorch's gate order and weight layout, so the weights of one layer of ``torch.nn.GRU``
    (``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``) load as
    they are. Gates ``r, z, n``: ``r, z = sigmoid(.)`` of their rows of
    ``x @ w_ih.T + b_ih + h @ w_hh.T + b_hh``; ``n = tanh(W_in x + b_in + r * (W_hn h +
    b_hn))``; ``h' = (1 - z) * n + z * h``.

    dtypes: float32 and float64 on the CPU, and float16 (and, for tensors, bfloat16) there
    too, computed in float32 by the C kernels and returned in the input dtype; float16,
    bfloat16 and float32 on CUDA (``"triton"``). All arrays of a call share one dtype, kind
    and device. torch tensors that require grad get gradients for every input (x, the
    weights and biases, the initial states) from the same backend's kernels; the op is
    registered with ``torch.library``, so ``torch.compile(fullgraph=True)`` traces it.

    Examples
    --------
    >>> import numpy as np, seqcore
    >>> x = np.random.randn(4, 50, 32).astype(np.float32)       # (B, T, I)
    >>> w_ih = np.random.randn(3 * 64, 32).astype(np.float32) * 0.1
    >>> w_hh = np.random.randn(3 * 64, 64).astype(np.float32) * 0.1
    >>> y, h_n = seqcore.gru(x, w_ih, w_hh, batch_first=True, reverse=True)
    >>> y.shape, h_n.shape
    ((4, 50, 64), (4, 64))
    """
    if type(x) is not np.ndarray:
        host = _arrays.host_views(backend, x, w_ih, w_hh, b_ih, b_hh, h0, lengths)
        if host is not None:  # CPU tensors, no autograd: the NumPy path (_arrays.host_views)
            return _arrays.host_results(gru(*host[:6], lengths=host[6], reverse=reverse,
                                            batch_first=batch_first, backend=backend))
    V.require_bool("reverse", reverse)
    V.require_bool("batch_first", batch_first)
    kind, backend, dtype, a, lengths = _prepare(
        "gru", x, w_ih, w_hh, b_ih, b_hh, [("h0", h0)], lengths, batch_first, backend, True)
    y, h_n = _run("gru", kind, backend, a, lengths, reverse)
    return _seq_out(y, dtype, batch_first), _arrays.astype(h_n, dtype)


@_dlpack.accepts_dlpack
def rnn(x: Array, w_ih: Array, w_hh: Array, b_ih: Optional[Array] = None,
        b_hh: Optional[Array] = None, h0: Optional[Array] = None, *,
        nonlinearity: str = "tanh", lengths: Union[Array, Sequence[int], None] = None,
        reverse: bool = False, batch_first: bool = False,
        backend: Optional[str] = None) -> Tuple[Array, Array]:
    """One Elman RNN layer (one direction, tanh or relu) over a whole sequence, in one fused call.

    Parameters
    ----------
    x : array, shape (T, B, I)
        Input sequence; ``(B, T, I)`` with `batch_first`.
    w_ih : array, shape (H, I)
        Input-to-hidden weights.
    w_hh : array, shape (H, H)
        Hidden-to-hidden weights; H is read from this shape.
    b_ih, b_hh : array, shape (H,), optional
        Biases; zeros when None.
    h0 : array, shape (B, H), optional
        Initial hidden state; zeros when None.
    nonlinearity : {"tanh", "relu"}, default "tanh"
        The activation, as ``torch.nn.RNN``'s argument of that name.
    lengths : sequence of int or integer array, shape (B,), optional
        Valid steps of each batch element, ``0 <= lengths[b] <= T``, as in `lstm`: ``y`` is
        zero past them and ``h_n`` is the state after the last valid step.
    reverse : bool, default False
        Run from the last step to the first (the backward direction of a bidirectional
        layer); ``y[t]`` is still the output at step ``t``.
    batch_first : bool, default False
        x and y are ``(B, T, .)`` instead of ``(T, B, .)``.
    backend : {None, "c", "triton", "numpy"}, optional
        As in `attention`: None picks ``"triton"`` for CUDA tensors and ``"c"`` for NumPy
        arrays and CPU tensors; ``"numpy"`` runs the float64 reference.

    Returns
    -------
    y : array, shape (T, B, H)
        The hidden state at every step (``(B, T, H)`` with `batch_first`), in x's dtype.
    h_n : array, shape (B, H)
        The final hidden state.

    Raises
    ------
    TypeError
        Mixed array kinds or dtypes, unsupported dtypes, non-bool flags, or lengths that
        are not integers.
    ValueError
        A nonlinearity other than "tanh" or "relu"; shapes that do not fit the layout (the
        message names the argument and the shapes seen), lengths outside [0, T], or inputs
        on different devices. Checked before any kernel runs.
    RuntimeError
        The requested backend is unavailable here.

    Notes
    -----
    ``h' = act(x @ w_ih.T + b_ih + h @ w_hh.T + b_hh)``, PyTorch's layout, so the weights of
    one layer of ``torch.nn.RNN`` (``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``,
    ``bias_hh_l{k}``) load as they are. The relu gradient is taken as 0 where the output is
    0, as torch's. dtypes, backends and gradients as in `lstm`; the kernels are the same
    recurrent kernels as LSTM's and GRU's, generic over the cell.

    Examples
    --------
    >>> import numpy as np, seqcore
    >>> x = np.random.randn(20, 3, 16).astype(np.float32)
    >>> w_ih = np.random.randn(32, 16).astype(np.float32) * 0.1
    >>> w_hh = np.random.randn(32, 32).astype(np.float32) * 0.1
    >>> y, h_n = seqcore.rnn(x, w_ih, w_hh, nonlinearity="relu")
    >>> y.shape, h_n.shape
    ((20, 3, 32), (3, 32))
    """
    cell = _elman_cell(nonlinearity)
    if type(x) is not np.ndarray:
        host = _arrays.host_views(backend, x, w_ih, w_hh, b_ih, b_hh, h0, lengths)
        if host is not None:  # CPU tensors, no autograd: the NumPy path (_arrays.host_views)
            return _arrays.host_results(rnn(*host[:6], nonlinearity=nonlinearity,
                                            lengths=host[6], reverse=reverse,
                                            batch_first=batch_first, backend=backend))
    V.require_bool("reverse", reverse)
    V.require_bool("batch_first", batch_first)
    kind, backend, dtype, a, lengths = _prepare(
        cell, x, w_ih, w_hh, b_ih, b_hh, [("h0", h0)], lengths, batch_first, backend, True)
    y, h_n = _run(cell, kind, backend, a, lengths, reverse)
    return _seq_out(y, dtype, batch_first), _arrays.astype(h_n, dtype)


_C_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _direct_cell(backend, G, x, w_ih, w_hh, biases, states):
    """The allocator of the results (shape -> array like x) when a cell step can go straight
    to the C kernel, else None: the C backend; NumPy arrays, or CPU tensors that need no
    gradient (_arrays.direct_tensor_alloc), of one float32/float64 dtype, C-contiguous, in
    the layout's shapes. A streaming model calls a cell once per frame, and the general
    checks and conversions cost more than the kernel at small sizes; every other call takes
    the general path, which explains what is wrong."""
    if backend not in (None, "c") or _backends._C_STATUS:
        return None
    arrays = (x, w_ih, w_hh) + states + biases
    if x.__class__ is np.ndarray:
        dt = x.dtype
        if dt not in _C_DTYPES:
            return None
        for a in arrays:  # (plain loops: this runs on every frame)
            if a is not None and (a.__class__ is not np.ndarray or a.dtype != dt or
                                  not a.flags.c_contiguous):
                return None
        new = _c.numpy_alloc(dt)
    else:
        new = _arrays.direct_tensor_alloc(arrays)
        if new is None:
            return None
    if x.ndim != 2 or w_hh.ndim != 2 or w_ih.ndim != 2:
        return None
    (B, I), (GH, H) = x.shape, w_hh.shape
    if I < 1 or H < 1 or GH != G * H or tuple(w_ih.shape) != (GH, I):
        return None
    for st in states:
        if st is None or tuple(st.shape) != (B, H):
            return None
    for b in biases:
        if b is not None and tuple(b.shape) != (GH,):
            return None
    return new


@_dlpack.accepts_dlpack
def lstm_cell(x: Array, h: Array, c: Array, w_ih: Array, w_hh: Array,
              b_ih: Optional[Array] = None, b_hh: Optional[Array] = None, *,
              backend: Optional[str] = None) -> Tuple[Array, Array]:
    """One LSTM step.

    Parameters
    ----------
    x : array, shape (B, I)
        Input at this step.
    h, c : array, shape (B, H)
        Hidden and cell state (required: pass zeros for a fresh state).
    w_ih : array, shape (4*H, I)
        Input-to-hidden weights, gates ``i, f, g, o``.
    w_hh : array, shape (4*H, H)
        Hidden-to-hidden weights.
    b_ih, b_hh : array, shape (4*H,), optional
        Biases; zeros when None.
    backend : {None, "c", "triton", "numpy"}, optional
        As in `attention`: None picks ``"triton"`` for CUDA tensors and ``"c"`` for NumPy
        arrays and CPU tensors; ``"numpy"`` runs the float64 reference.

    Returns
    -------
    h_new, c_new : array, shape (B, H)
        The next hidden and cell state, in x's dtype.

    Raises
    ------
    TypeError
        Mixed array kinds or dtypes, unsupported dtypes, non-bool flags, or h or c missing.
    ValueError
        Shapes that do not fit the layout (the message names the argument and the shapes
        seen), or inputs on different devices. Checked before any kernel runs.
    RuntimeError
        The requested backend is unavailable here.

    Notes
    -----
    One step of `lstm`, in PyTorch's layout (the weights of ``torch.nn.LSTMCell``, or of one
    layer of ``torch.nn.LSTM``, load as they are). Gates ``i, f, g, o``:
    ``i, f, o = sigmoid(.)`` and ``g = tanh(.)`` of their rows of
    ``x @ w_ih.T + b_ih + h @ w_hh.T + b_hh``; ``c' = f * c + i * g``, ``h' = o * tanh(c')``.

    dtypes, backends and gradients as in `lstm`. A call with NumPy arrays (or CPU tensors
    that need no grad) of one float32 or float64 dtype, C-contiguous, goes straight to the C
    kernel, so a stream of one-frame calls stays cheap.

    Examples
    --------
    >>> import numpy as np, seqcore
    >>> B, I, H = 1, 32, 64
    >>> w_ih = np.random.randn(4 * H, I).astype(np.float32) * 0.1
    >>> w_hh = np.random.randn(4 * H, H).astype(np.float32) * 0.1
    >>> h = c = np.zeros((B, H), np.float32)
    >>> for frame in np.random.randn(10, B, I).astype(np.float32):
    ...     h, c = seqcore.lstm_cell(frame, h, c, w_ih, w_hh)
    """
    new = _direct_cell(backend, 4, x, w_ih, w_hh, (b_ih, b_hh), (h, c))
    if new is not None:
        _, h_n, c_n, _ = _c_recurrent.lstm_fwd(x, w_ih, w_hh, b_ih, b_hh, h, c, None,
                                               False, False, new)
        return h_n, c_n
    if type(x) is not np.ndarray:
        host = _arrays.host_views(backend, x, h, c, w_ih, w_hh, b_ih, b_hh)
        if host is not None:  # CPU tensors, no autograd: the NumPy path (_arrays.host_views)
            return _arrays.host_results(lstm_cell(*host, backend=backend))
    if h is None or c is None:
        raise TypeError("lstm_cell needs h and c (pass zeros for a fresh state)")
    kind, backend, dtype, a, _ = _prepare(
        "lstm", x, w_ih, w_hh, b_ih, b_hh, [("h", h), ("c", c)], None, False, backend, False)
    a["h0"], a["c0"] = a.pop("h"), a.pop("c")
    _, h_n, c_n = _run("lstm", kind, backend, a, None, False)
    return _arrays.astype(h_n, dtype), _arrays.astype(c_n, dtype)


@_dlpack.accepts_dlpack
def gru_cell(x: Array, h: Array, w_ih: Array, w_hh: Array, b_ih: Optional[Array] = None,
             b_hh: Optional[Array] = None, *, backend: Optional[str] = None) -> Array:
    """One GRU step.

    Parameters
    ----------
    x : array, shape (B, I)
        Input at this step.
    h : array, shape (B, H)
        Hidden state (required: pass zeros for a fresh state).
    w_ih : array, shape (3*H, I)
        Input-to-hidden weights, gates ``r, z, n``.
    w_hh : array, shape (3*H, H)
        Hidden-to-hidden weights.
    b_ih, b_hh : array, shape (3*H,), optional
        Biases; zeros when None.
    backend : {None, "c", "triton", "numpy"}, optional
        As in `attention`: None picks ``"triton"`` for CUDA tensors and ``"c"`` for NumPy
        arrays and CPU tensors; ``"numpy"`` runs the float64 reference.

    Returns
    -------
    h_new : array, shape (B, H)
        The next hidden state, in x's dtype.

    Raises
    ------
    TypeError
        Mixed array kinds or dtypes, unsupported dtypes, non-bool flags, or h missing.
    ValueError
        Shapes that do not fit the layout (the message names the argument and the shapes
        seen), or inputs on different devices. Checked before any kernel runs.
    RuntimeError
        The requested backend is unavailable here.

    Notes
    -----
    One step of `gru`, in PyTorch's layout (the weights of ``torch.nn.GRUCell``, or of one
    layer of ``torch.nn.GRU``, load as they are). Gates ``r, z, n``: ``r, z = sigmoid(.)``
    of their rows of ``x @ w_ih.T + b_ih + h @ w_hh.T + b_hh``;
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``; ``h' = (1 - z) * n + z * h``.

    dtypes, backends and gradients as in `gru`. A call with NumPy arrays (or CPU tensors
    that need no grad) of one float32 or float64 dtype, C-contiguous, goes straight to the C
    kernel, so a stream of one-frame calls stays cheap.

    Examples
    --------
    >>> import numpy as np, seqcore
    >>> x, h = np.random.randn(8, 32), np.zeros((8, 64))           # float64
    >>> w_ih, w_hh = np.random.randn(3 * 64, 32), np.random.randn(3 * 64, 64)
    >>> seqcore.gru_cell(x, h, w_ih, w_hh).shape
    (8, 64)
    """
    new = _direct_cell(backend, 3, x, w_ih, w_hh, (b_ih, b_hh), (h,))
    if new is not None:
        return _c_recurrent.gru_fwd(x, w_ih, w_hh, b_ih, b_hh, h, None, False, False,
                                    new)[1]
    if type(x) is not np.ndarray:
        host = _arrays.host_views(backend, x, h, w_ih, w_hh, b_ih, b_hh)
        if host is not None:  # CPU tensors, no autograd: the NumPy path (_arrays.host_views)
            return _arrays.host_results(gru_cell(*host, backend=backend))
    if h is None:
        raise TypeError("gru_cell needs h (pass zeros for a fresh state)")
    kind, backend, dtype, a, _ = _prepare(
        "gru", x, w_ih, w_hh, b_ih, b_hh, [("h", h)], None, False, backend, False)
    a["h0"] = a.pop("h")
    _, h_n = _run("gru", kind, backend, a, None, False)
    return _arrays.astype(h_n, dtype)


@_dlpack.accepts_dlpack
def rnn_cell(x: Array, h: Array, w_ih: Array, w_hh: Array, b_ih: Optional[Array] = None,
             b_hh: Optional[Array] = None, *, nonlinearity: str = "tanh",
             backend: Optional[str] = None) -> Array:
    """One Elman RNN step, tanh or relu.

    Parameters
    ----------
    x : array, shape (B, I)
        Input at this step.
    h : array, shape (B, H)
        Hidden state (required: pass zeros for a fresh state).
    w_ih : array, shape (H, I)
        Input-to-hidden weights.
    w_hh : array, shape (H, H)
        Hidden-to-hidden weights.
    b_ih, b_hh : array, shape (H,), optional
        Biases; zeros when None.
    nonlinearity : {"tanh", "relu"}, default "tanh"
        The activation, as ``torch.nn.RNNCell``'s argument of that name.
    backend : {None, "c", "triton", "numpy"}, optional
        As in `attention`: None picks ``"triton"`` for CUDA tensors and ``"c"`` for NumPy
        arrays and CPU tensors; ``"numpy"`` runs the float64 reference.

    Returns
    -------
    h_new : array, shape (B, H)
        ``act(x @ w_ih.T + b_ih + h @ w_hh.T + b_hh)``, in x's dtype.

    Raises
    ------
    TypeError
        Mixed array kinds or dtypes, unsupported dtypes, or h missing.
    ValueError
        A nonlinearity other than "tanh" or "relu", shapes that do not fit the layout, or
        inputs on different devices. Checked before any kernel runs.
    RuntimeError
        The requested backend is unavailable here.

    Notes
    -----
    One step of `rnn` (the weights of ``torch.nn.RNNCell``, or of one layer of
    ``torch.nn.RNN``, load as they are). dtypes, backends and gradients as in `lstm`. A call
    with NumPy arrays (or CPU tensors that need no grad) of one float32 or float64 dtype,
    C-contiguous, goes straight to the C kernel, as `lstm_cell`'s does.

    Examples
    --------
    >>> import numpy as np, seqcore
    >>> x, h = np.random.randn(8, 32), np.zeros((8, 64))           # float64
    >>> w_ih, w_hh = np.random.randn(64, 32), np.random.randn(64, 64)
    >>> seqcore.rnn_cell(x, h, w_ih, w_hh, nonlinearity="relu").shape
    (8, 64)
    """
    cell = _elman_cell(nonlinearity)
    new = _direct_cell(backend, 1, x, w_ih, w_hh, (b_ih, b_hh), (h,))
    if new is not None:
        return _c_recurrent.rnn_fwd(x, w_ih, w_hh, b_ih, b_hh, h, None, False,
                                    nonlinearity, False, new)[1]
    if type(x) is not np.ndarray:
        host = _arrays.host_views(backend, x, h, w_ih, w_hh, b_ih, b_hh)
        if host is not None:  # CPU tensors, no autograd: the NumPy path (_arrays.host_views)
            return _arrays.host_results(rnn_cell(*host, nonlinearity=nonlinearity,
                                                 backend=backend))
    if h is None:
        raise TypeError("rnn_cell needs h (pass zeros for a fresh state)")
    kind, backend, dtype, a, _ = _prepare(
        cell, x, w_ih, w_hh, b_ih, b_hh, [("h", h)], None, False, backend, False)
    a["h0"] = a.pop("h")
    _, h_n = _run(cell, kind, backend, a, None, False)
    return _arrays.astype(h_n, dtype)
