"""Many training runs as one experiment, and what the measuring studies start from: the grid of a sweep
(grid.py: axes, `where` overrides, points), the runner (runner.py: manifest, lock, resume, runs of one
shape trained together, the local executor; with `--jobs N` its groups in worker processes: jobs.py,
worker.py), the Ray executor (ray_executor.py) and the probe
(probe.py: the network at a seed, its probe batch, in a precision). `bioprop sweep`, `reproduce`,
`sweep beta --train` and `sweep condition --train` train through the runner."""
