"""Triton kernels for asr, each with a PyTorch reference."""
