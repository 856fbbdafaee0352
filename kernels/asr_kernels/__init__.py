"""Triton kernels for asr, each with a PyTorch reference.

* :mod:`asr_kernels.reference`: the PyTorch references (torch only; importable without triton).
* :mod:`asr_kernels.rel_pos_attention`: fused relative-position attention and attention weights
  (imports triton).

This package file imports neither, so ``import asr_kernels`` works where triton is missing; ``asr``
reaches the kernels only through :mod:`asr.nn.fused_attention`.
"""
