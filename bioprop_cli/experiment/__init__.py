"""Many training runs as one experiment: the grid of a sweep (grid.py: axes, `where` overrides,
points), the runner (runner.py: manifest, lock, resume, runs of one shape trained together, the local
executor) and the Ray executor (ray_executor.py). `bioprop sweep`, `reproduce`, `sweep beta --train`
and `sweep condition --train` train through the runner."""
