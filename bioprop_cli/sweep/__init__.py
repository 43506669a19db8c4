"""Sweeps: grids of runs and measurements (`bioprop sweep ...`)."""
