"""The per-seed loop of the gradient studies (`bioprop sweep beta`, `bioprop sweep pc`): per seed, the
network (at initialisation or trained in float32), then the study's measurements on it (in float64
when asked)."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from bioprop_cli.config import Config
from bioprop_cli.experiment.probe import measuring
from bioprop_cli.interrupt import check as check_interrupt
from bioprop_cli.splits import derive_keys, make_splits
from bioprop_cli.train import build_program


def fixed_network(config: Config, splits, seed: int, train_epochs: int):
    """The network a study measures: initialised from `seed`, then trained `train_epochs` epochs;
    (params, rule state)."""
    config = replace(config, alignment=replace(config.alignment, enabled=False))
    program = build_program(config, splits.x_train.shape[0], splits.x_train.shape[1])
    keys = derive_keys(seed)
    state = program.init(seed)
    for epoch in range(train_epochs):
        state, _ = program.epoch(state, splits.x_train, splits.y_train, splits.x_train[:1], splits.y_train[:1], keys, epoch)
    return state.params, state.rule_state


def measure_seeds(config: Config, dataset, seeds: list[int], train_epochs: int, x64: bool, measure: Callable,
                  progress: Callable[[str], None]) -> list:
    """[measure(splits, seed, params, rule_state, dtype) for each seed], on the seed's fixed_network;
    dtype float64 (and JAX's 64-bit mode on) when `x64`, else float32."""
    splits = make_splits(config, dataset)
    measured = []
    for seed in seeds:
        check_interrupt()
        progress(f"seed {seed}: network")
        params, rule_state = fixed_network(config, splits, seed, train_epochs)
        progress(f"seed {seed}: measuring")
        with measuring(x64) as dtype:
            measured.append(measure(splits, seed, params, rule_state, dtype))
    return measured
