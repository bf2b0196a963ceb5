"""Attentive group equivariant convolutional networks (Romero et al., ICML 2020), reproduced in PyTorch."""

__version__ = "0.1.0"
