"""The shipped configs load, and configs/default.yaml documents the real defaults."""

from pathlib import Path

import pytest
import yaml

from bioprop_cli.config import Config, load_config, to_dict

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_default_yaml_lists_every_key_with_its_default():
    assert yaml.safe_load((CONFIGS / "default.yaml").read_text()) == to_dict(Config())


@pytest.mark.parametrize("rule", ["bp", "fa", "dfa", "usf", "frsf", "brsf"])
def test_one_config_per_rule(rule):
    assert load_config(CONFIGS / f"{rule}.yaml").rule == rule


def test_ep_yaml_spells_out_the_ep_defaults():
    assert load_config(CONFIGS / "ep.yaml") == load_config(overrides=[("rule", "ep"), ("experiment", "ep")])
