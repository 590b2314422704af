"""Triton kernels, one op family per file; installed as seqcore.kernels.

Importing this package needs torch and triton; seqcore imports it only for the triton backend.
"""
