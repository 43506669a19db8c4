"""The shipped configs load, and configs/default.yaml documents the real defaults."""


import pytest
import yaml

from bioprop_cli.config import Config, load_config, to_dict
from bioprop_cli.rules import available_rules
from helpers import REPO_ROOT

CONFIGS = REPO_ROOT / "configs"


def test_default_yaml_lists_every_key_with_its_default():
    assert yaml.safe_load((CONFIGS / "default.yaml").read_text()) == to_dict(Config())


@pytest.mark.parametrize("rule", available_rules())
def test_one_config_per_rule(rule):
    assert load_config(CONFIGS / f"{rule}.yaml").rule == rule


def test_ep_yaml_spells_out_the_ep_defaults():
    assert load_config(CONFIGS / "ep.yaml") == load_config(overrides=[("rule", "ep"), ("experiment", "ep")])


@pytest.mark.parametrize("path", sorted((CONFIGS / "experiments").glob("*.yaml")), ids=lambda p: p.stem)
def test_ready_experiments_are_valid_sweeps(path):
    """Every point of every ready experiment, with its `where` overrides, builds a valid config."""
    from bioprop_cli.config import read_yaml
    from bioprop_cli.experiment.grid import check_points, check_where, points, read_sweep_section

    section = read_yaml(path)["sweep"]
    grid, where, _ = read_sweep_section(section)
    base = to_dict(load_config(path))
    check_where(grid, where, points(grid))
    check_points(base, points(grid), 0, where)
    assert section["seeds"] >= 1
