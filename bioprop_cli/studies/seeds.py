"""The points of the gradient studies (`bioprop sweep beta`, `bioprop sweep pc`) are seeds: per seed
the network (at initialisation or trained in float32), then the study's measurements on it (in float64
when asked). SeedStudy is the part of the Study protocol (experiment/study.py) that they share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import replace
from typing import Callable

from bioprop_cli.config import Config, to_dict
from bioprop_cli.experiment.probe import measuring
from bioprop_cli.experiment.runner import identity_name
from bioprop_cli.experiment.study import Measured
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


def study_folder_name(kind: str, config: Config, settings: dict) -> str:
    """<kind>-<hash of the config (less where results go) and the study's settings>: the same command,
    the same folder (runner.identity_name), which it resumes."""
    content = {k: v for k, v in to_dict(config).items() if k not in ("results_dir", "experiment")}
    return identity_name(kind, {"base": content, **settings})


class SeedStudy(ABC):
    """Points "s<seed>" for each seed; a subclass gives name, title, measure_network(splits, seed, params,
    rule_state, dtype) -> Measured (run in float64 with JAX's 64-bit mode on when `x64`), summarise and figures."""

    def __init__(self, config: Config, dataset, seeds: list[int], train_epochs: int, x64: bool,
                 progress: Callable[[str], None] = lambda m: None):
        self.config, self.dataset, self.seeds = config, dataset, list(seeds)
        self.train_epochs, self.x64, self.progress = train_epochs, x64, progress
        self._splits = None

    @property
    def precision(self) -> str:
        return "float64" if self.x64 else "float32"

    @property
    def splits(self):
        if self._splits is None:
            self._splits = make_splits(self.config, self.dataset)
        return self._splits

    def points(self) -> list[str]:
        return [f"s{seed}" for seed in self.seeds]

    def seed_facts(self) -> dict:
        """What a seed study's summary records of its points (a subclass sets n_batches, its batches per seed)."""
        return {"seeds": self.seeds, "batches_per_seed": self.n_batches, "train_epochs": self.train_epochs}

    def measure(self, point: str) -> Measured:
        seed = int(point[1:])
        self.progress(f"seed {seed}: network")
        params, rule_state = fixed_network(self.config, self.splits, seed, self.train_epochs)
        self.progress(f"seed {seed}: measuring")
        with measuring(self.x64) as dtype:
            return self.measure_network(self.splits, seed, params, rule_state, dtype)

    @abstractmethod
    def measure_network(self, splits, seed: int, params, rule_state, dtype) -> Measured:
        """The seed's measurements on its network (params, rule state) in `dtype`."""
