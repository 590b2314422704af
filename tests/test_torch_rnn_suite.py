"""PyTorch's own RNN module tests (test/test_nn.py: test_RNN_*, test_rnn_*, test_LSTM_*,
test_*cell*), ported in our words and run against seqcore.nn: what torch promises its users
about nn.LSTM/GRU/RNN and their cells beyond matching numbers, which a drop-in must keep.

test_nn.py covers the numerical agreement with torch.nn over layers, directions, batch_first,
biases, packed sequences, projections and inter-layer dropout; this file adds the behaviours
torch's suite checks one by one: empty batches, bad argument shapes, initial states equal to
zeros, dropout edge values and train/eval, gradients through one output, retained graphs,
parametrized weights, dtype conversion, deep copies and weight sharing. Each case names the
torch test it follows.
"""
import copy

import pytest

torch = pytest.importorskip("torch")

import torch.nn as tnn  # noqa: E402

import seqcore.nn as snn  # noqa: E402
from conftest import assert_close, require_backend  # noqa: E402

MODULES = {"lstm": (snn.LSTM, tnn.LSTM), "gru": (snn.GRU, tnn.GRU), "rnn": (snn.RNN, tnn.RNN)}
CELLS = {"lstm": (snn.LSTMCell, tnn.LSTMCell), "gru": (snn.GRUCell, tnn.GRUCell),
         "rnn": (snn.RNNCell, tnn.RNNCell)}
# what a bad argument raises: torch raises RuntimeError, seqcore ValueError (the API
# contract: clear ValueError/TypeError before any kernel runs)
BAD = (ValueError, RuntimeError)


@pytest.fixture(autouse=True)
def _c_backend():
    require_backend("c")


def pair(kind, table=MODULES, dtype=torch.float64, **kwargs):
    """A torch module and a seqcore module of class `kind` with the same weights."""
    ours, theirs = table[kind]
    ref = theirs(dtype=dtype, **kwargs)
    mine = ours(dtype=dtype, **kwargs)
    mine.load_state_dict(ref.state_dict())
    return ref, mine


def zeros_state(kind, shape, dtype=torch.float64):
    h = torch.zeros(shape, dtype=dtype)
    return (h, torch.zeros(shape, dtype=dtype)) if kind == "lstm" else h


def states(state):
    return state if isinstance(state, tuple) else (state,)


# ---- test_RNN_input_size_zero: an empty batch runs forward and backward ----------------------

@pytest.mark.parametrize("kind", MODULES)
def test_empty_batch_forward_and_backward(kind):
    ref, mine = pair(kind, input_size=3, hidden_size=4)
    x = torch.zeros((5, 0, 3), dtype=torch.float64, requires_grad=True)
    for module in (ref, mine):
        out, state = module(x)
        assert out.shape == (5, 0, 4)
        assert all(s.shape == (1, 0, 4) for s in states(state))
        out.sum().backward()  # no error, and gradients of the right (zero) size
        assert x.grad.shape == x.shape
        x.grad = None
    for p in mine.parameters():
        assert p.grad is not None and not p.grad.abs().sum()


# ---- test_rnn_args_check: every wrong size is refused ------------------------------------------

WRONG_SIZES = [(kind, bad) for kind in MODULES
               for bad in ("input features", "input rank", "hidden batch", "hidden size",
                           "hidden layers") + (("cell batch",) if kind == "lstm" else ())]


@pytest.mark.parametrize("kind, bad", WRONG_SIZES)
def test_wrong_argument_sizes_are_refused(kind, bad):
    T, B, I, H, L = 4, 3, 5, 6, 2
    _, mine = pair(kind, input_size=I, hidden_size=H, num_layers=L, bidirectional=True)
    x = torch.randn(T, B, I, dtype=torch.float64)
    h = torch.randn(2 * L, B, H, dtype=torch.float64)
    c = torch.randn(2 * L, B, H, dtype=torch.float64)
    if bad == "input features":
        x = torch.randn(T, B, I + 1, dtype=torch.float64)
    elif bad == "input rank":
        x = torch.randn(T, B, I, 1, dtype=torch.float64)
    elif bad == "hidden batch":
        h = torch.randn(2 * L, B + 1, H, dtype=torch.float64)
    elif bad == "hidden size":
        h = torch.randn(2 * L, B, H + 1, dtype=torch.float64)
    elif bad == "hidden layers":
        h = torch.randn(L, B, H, dtype=torch.float64)
    elif bad == "cell batch":
        c = torch.randn(2 * L, B + 1, H, dtype=torch.float64)
    with pytest.raises(BAD):
        mine(x, (h, c) if kind == "lstm" else h)


# ---- test_RNN_cell_no_broadcasting: a cell's state must match its input's batch -------------

@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize("bad", ["hidden batch", "hidden size", "input features"])
def test_cell_sizes_do_not_broadcast(kind, bad):
    _, mine = pair(kind, CELLS, input_size=10, hidden_size=20)
    x, h = torch.randn(3, 10, dtype=torch.float64), torch.randn(3, 20, dtype=torch.float64)
    if bad == "hidden batch":
        h = torch.randn(1, 20, dtype=torch.float64)
    elif bad == "hidden size":
        h = torch.randn(3, 21, dtype=torch.float64)
    else:
        x = torch.randn(3, 11, dtype=torch.float64)
    with pytest.raises(BAD):
        mine(x, (h, h.clone()) if kind == "lstm" else h)


# ---- test_rnn_initial_hidden_state: zeros given equal no state given --------------------------

@pytest.mark.parametrize("kind", MODULES)
def test_zero_initial_state_equals_none(kind):
    _, mine = pair(kind, input_size=5, hidden_size=7, num_layers=2)
    x = torch.randn(6, 3, 5, dtype=torch.float64)
    out_none, state_none = mine(x)
    out_zero, state_zero = mine(x, zeros_state(kind, (2, 3, 7)))
    assert torch.equal(out_none, out_zero)
    for a, b in zip(states(state_none), states(state_zero)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", CELLS)
def test_cell_zero_initial_state_equals_none(kind):
    _, mine = pair(kind, CELLS, input_size=5, hidden_size=7)
    x = torch.randn(3, 5, dtype=torch.float64)
    for a, b in zip(states(mine(x)), states(mine(x, zeros_state(kind, (3, 7))))):
        assert torch.equal(a, b)


# ---- test_RNN_nonlinearity -----------------------------------------------------------------

def test_nonlinearity_attribute_and_refusal():
    assert snn.RNN(1, 10).nonlinearity == "tanh"
    assert snn.RNN(1, 10, nonlinearity="relu").nonlinearity == "relu"
    assert snn.RNNCell(1, 10, nonlinearity="relu").nonlinearity == "relu"
    with pytest.raises(ValueError):
        snn.RNN(1, 10, nonlinearity="garbage")
    with pytest.raises(ValueError):
        snn.RNNCell(1, 10, nonlinearity="garbage")


# ---- test_RNN_dropout: p = 0 is no dropout, p = 1 drops all of a layer's input --------------

@pytest.mark.parametrize("kind", MODULES)
def test_dropout_edge_values(kind):
    torch.manual_seed(0)
    ref, _ = pair(kind, input_size=8, hidden_size=8, num_layers=2)
    x = torch.randn(4, 2, 8, dtype=torch.float64)
    for p in (0.0, 1.0):
        _, mine = pair(kind, input_size=8, hidden_size=8, num_layers=2, dropout=p)
        mine.load_state_dict(ref.state_dict())
        mine.train()
        out, _ = mine(x)
        if p == 0.0:
            assert_close(out, ref(x)[0], "float64")
        else:
            # layer 2 sees only zeros: its output is that of a zero input sequence
            second = MODULES[kind][0](8, 8, dtype=torch.float64)
            second.load_state_dict({name.replace("_l1", "_l0"): w for name, w in
                                    mine.state_dict().items() if "_l1" in name})
            assert_close(out, second(torch.zeros_like(x))[0], "float64")


# ---- test_RNN_dropout_state / test_RNN_change_dropout: train vs eval, the attribute ----------

@pytest.mark.parametrize("kind", MODULES)
def test_dropout_follows_train_eval_and_the_attribute(kind):
    torch.manual_seed(1)
    _, mine = pair(kind, input_size=16, hidden_size=16, num_layers=2, dropout=0.5)
    x = torch.randn(5, 4, 16, dtype=torch.float64)
    mine.train()
    first, second = mine(x)[0], mine(x)[0]
    assert not torch.equal(first, second)  # a new mask per call
    mine.eval()
    assert torch.equal(mine(x)[0], mine(x)[0])  # no dropout in eval mode
    mine.train()
    mine.dropout = 0.0  # changed between calls (torch reads the attribute each forward)
    assert torch.equal(mine(x)[0], mine(x)[0])


# ---- test_lstmcell_backward_only_one_output_grad, test_LSTM_cell ------------------------------

@pytest.mark.parametrize("which", [0, 1])
def test_lstm_cell_backward_through_one_output(which):
    ref, mine = pair("lstm", CELLS, input_size=3, hidden_size=5)
    x = torch.randn(2, 3, dtype=torch.float64)
    state = (torch.randn(2, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64))
    grads = []
    for module in (ref, mine):
        xi = x.clone().requires_grad_()
        module(xi, state)[which].sum().backward()
        grads.append([xi.grad] + [p.grad for p in module.parameters()])
    for g_mine, g_ref in zip(grads[1], grads[0]):
        assert_close(g_mine, g_ref, "float64", grad=True)


@pytest.mark.parametrize("kind", CELLS)
def test_cell_unrolled_loop_matches_torch(kind):
    """A few steps of a cell with the state fed back, then backward through all of them."""
    ref, mine = pair(kind, CELLS, input_size=10, hidden_size=20)
    xs = torch.randn(6, 3, 10, dtype=torch.float64)
    losses = []
    for module in (ref, mine):
        state = zeros_state(kind, (3, 20))
        total = 0
        for x in xs:
            state = module(x, state)
            total = total + sum(s.sum() for s in states(state))
        total.backward()
        losses.append(total.detach())
    assert_close(losses[1], losses[0], "float64")
    for p_mine, p_ref in zip(mine.parameters(), ref.parameters()):
        assert_close(p_mine.grad, p_ref.grad, "float64", grad=True)


# ---- test_rnn_retain_variables: backward twice through a retained graph ----------------------

@pytest.mark.parametrize("kind", MODULES)
def test_backward_twice_with_retained_graph(kind):
    _, mine = pair(kind, input_size=10, hidden_size=20, num_layers=2)
    x = torch.randn(5, 6, 10, dtype=torch.float64, requires_grad=True)
    out = mine(x)[0]
    seen = []
    for _ in range(2):
        mine.zero_grad()
        x.grad = None
        out.sum().backward(retain_graph=True)
        seen.append([x.grad.clone()] + [p.grad.clone() for p in mine.parameters()])
    for a, b in zip(*seen):
        assert torch.equal(a, b)


# ---- weight sharing: one module twice in a graph accumulates both calls' gradients -----------

@pytest.mark.parametrize("kind", MODULES)
def test_module_called_twice_accumulates_gradients(kind):
    ref, mine = pair(kind, input_size=4, hidden_size=4)
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    for module in (ref, mine):
        module(module(x)[0])[0].sum().backward()
    for p_mine, p_ref in zip(mine.parameters(), ref.parameters()):
        assert_close(p_mine.grad, p_ref.grad, "float64", grad=True)


# ---- test_rnn_weight_norm: parametrized weights are read at every call -------------------------

@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_parametrized_weight(kind):
    from torch.nn.utils.parametrizations import weight_norm

    ref, mine = pair(kind, input_size=10, hidden_size=6)
    x = torch.randn(4, 3, 10, dtype=torch.float64)
    for module in (ref, mine):
        weight_norm(module, name="weight_hh_l0")
    assert_close(mine(x)[0], ref(x)[0], "float64")
    for module in (ref, mine):
        module(x)[0].sum().backward()
    g_ref = ref.parametrizations.weight_hh_l0.original1.grad
    g_mine = mine.parametrizations.weight_hh_l0.original1.grad
    assert_close(g_mine, g_ref, "float64", grad=True)


# ---- dtype conversion and copies (test_RNN_cpu_vs_cudnn's .double(), deepcopy of modules) -----

@pytest.mark.parametrize("kind", MODULES)
def test_dtype_conversion_and_deepcopy(kind):
    ref, mine = pair(kind, dtype=torch.float32, input_size=5, hidden_size=3, num_layers=2)
    ref, mine = ref.double(), mine.double()
    assert all(p.dtype == torch.float64 for p in mine.parameters())
    x = torch.randn(4, 2, 5, dtype=torch.float64)
    assert_close(mine(x)[0], ref(x)[0], "float64")
    twin = copy.deepcopy(mine)
    assert torch.equal(twin(x)[0], mine(x)[0])
    with torch.no_grad():
        next(twin.parameters()).add_(1.0)  # the copy owns its weights
    assert not torch.equal(twin(x)[0], mine(x)[0])
