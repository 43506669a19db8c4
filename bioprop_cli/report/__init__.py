"""`bioprop compare`: aggregate run folders (and beta sweeps) into tables, curves, findings, figures and a report.

    aggregate.py  loading, grouping, statistics, curves, breaking depths, findings (pure: no printing, no files written)
    axes.py       swept numeric hyperparameters: per-axis slices, each rule's best value and best setting
    comparison.py everything at once: aggregate() gathers both into one Comparison
    plots.py      matplotlib figures (headless), one PNG each
    render.py     report.md and a self-contained report.html
"""
