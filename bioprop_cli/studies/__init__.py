"""The studies: measurements and short trainings beyond one training run, one module each.

    conditions.py  `bioprop conditions`: which of the seven conditions of gradient equivalence hold
    jtranspose.py  `bioprop jtranspose`: EP's nudged state shift against backprop's J^T e
    beta.py        `bioprop sweep beta`: bias and spread of EP's estimate against beta (or one training per beta)
    condition.py   `bioprop sweep condition`: break one condition of gradient equivalence at a time
    pc.py          `bioprop sweep pc`: predictive coding's update against the exact gradient over gamma and inference steps

`sweep beta` and `sweep pc` are Studies (experiment/study.py: points -> measure -> summarise -> figures;
their points are seeds, studies/seeds.py): run by experiment/study.run_study in a folder named by what
they measure, each seed's measurement appended as it is made, so that the same command after Ctrl-C or
kill -9 measures only the seeds not yet measured. `conditions` and `jtranspose` (one measurement each) and
`sweep condition` have `run(config, dataset, ...) -> result`: the computation (and, where the study
trains, the training, through the runner: experiment/runner.py, in a folder named by what it trains,
resumed by the same command), no printing and no other file; and `write(result, folder)`: the study's
files, atomically (bioprop_cli/runs.py). Figures are drawn by bioprop_cli/report/study_figures.py. The
CLI modules parse the flags, call these, and print.

What is a metric and what is a study: bioprop_cli/metrics/ holds pure functions of arrays (a network,
a batch) to numbers, and the thresholds that grade a number (metrics/conditions.py: each condition's
measurement, its status and the table of the seven); a study draws the network and the data from a
config and a seed (experiment/probe.py: the network at a seed, its probe, in a precision), chooses the precision, loops over seeds, points
or runs, pools the numbers, and decides what is written.
"""
