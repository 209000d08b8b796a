"""Backward-pass rewrites: recompute what the gradient reads instead of keeping it from the forward pass."""
