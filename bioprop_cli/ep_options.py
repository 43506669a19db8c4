"""The names an `ep:` config key may take: one home that config.py validates against and ep.py and
models/energy.py implement (config sits below the EP physics; nothing here computes)."""

DYNAMICS = ("gradient", "primitive")  # `ep.dynamics` (models/energy.py)
# `ep.output_layer`: clipped (the output layer has the hidden layers' rho; the hard sigmoid clips it to
# [0, 1]) | linear (rho = identity and an unbounded state on the output layer only, Scellier et al.
# 2023's deep Hopfield networks; models/energy.py)
OUTPUT_LAYERS = ("clipped", "linear")
ESTIMATORS = ("one-sided", "negative", "symmetric", "random-sign", "clamped", "coupled",
              "holomorphic")  # `ep.estimator`: the second state(s)
CLAMPED_ESTIMATORS = ("clamped", "coupled")  # the output layer clamped in the second phase (mse cost only)
# `ep.cost` (mean-squared network): C = 1/2 |y - s_L|^2 (half_squared), or |y - s_L|^2 (squared, the
# cost of Scellier & Bengio's code, model.py `__cost`: twice the nudging force at the same beta)
COSTS = ("half_squared", "squared")
# The activations with a holomorphic extension (the complex logistic sigmoid and tanh), which holomorphic
# EP (ep.estimator holomorphic, bioprop_cli/ep.py) settles with complex states; the hard sigmoids clip the
# state (no complex extension).
HOLOMORPHIC_RHOS = ("sigmoid", "unit_slope_sigmoid", "tanh")
