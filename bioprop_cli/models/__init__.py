"""Network models: the feedforward MLP (energy-based networks come with equilibrium propagation)."""
