"""Converters: a user's Flax linen, Flax nnx or Equinox model with its Dense/Linear and Conv layers run by
bioprop's feedback layers (like biotorch's BioModule). Import the one you need (each imports its framework):
bioprop.convert.linen, bioprop.convert.nnx, bioprop.convert.equinox. See docs/converters.md."""

from bioprop.convert._common import UnconvertibleLayer

__all__ = ["UnconvertibleLayer"]
