"""Array conversion shared by the references: everything becomes float64 / int64 NumPy."""
import numpy as np


def _f64(x):
    """float64 NumPy copy/view of an array, or of a torch tensor (any device, bfloat16 too)."""
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _ints(x):
    """int64 NumPy copy of an index array, list or torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.int64)
