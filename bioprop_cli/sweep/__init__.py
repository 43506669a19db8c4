"""Grids of runs (`bioprop sweep AXIS / --grid`): the grid and manifest (grid.py) and the executors (ray_executor.py).
The beta and condition sweeps are studies (bioprop_cli/studies/)."""
