"""float64 NumPy reference implementations of every seqcore op, forward and backward."""
