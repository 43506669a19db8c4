"""Every figure bioprop draws (matplotlib lives only here), and `bioprop compare`: aggregate run folders (and
beta sweeps) into tables, curves, findings, figures and a report.

    aggregate.py  loading, grouping, statistics, curves, breaking depths, findings (pure: no printing, no files written)
    axes.py       swept numeric hyperparameters: per-axis slices, each rule's best value and best setting
    comparison.py everything at once: aggregate() gathers both into one Comparison
    plots.py      matplotlib figures (headless), one PNG each
    study_figures.py  the figures of the studies (bioprop_cli/studies/: beta and condition sweeps, jtranspose)
    study_tables.py   the jtranspose tables (printed, and written as table.txt)
    render.py     report.md and a self-contained report.html
"""
