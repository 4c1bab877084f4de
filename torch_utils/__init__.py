"""PyTorch utilities: persistence (self-contained pickles), misc helpers, training statistics
and the custom ops in `torch_utils.ops`."""
