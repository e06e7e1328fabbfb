"""Triton kernels. They take tensors and return tensors and statistics; they know nothing of `study`."""
