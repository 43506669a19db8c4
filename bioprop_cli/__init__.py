"""bioprop: an experiment runner for biologically plausible learning rules."""

__version__ = "0.1.0"
