"""Measurements: angles, exact gradients, alignment of a rule with backprop."""
