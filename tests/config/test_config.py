"""Tests for bioprop_cli.config: defaults, YAML + overrides precedence, strict one-line errors, round trips."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from bioprop_cli.config import (
    Config,
    check_stored,
    check_against_data,
    load_config,
    parse_override,
    read_yaml,
    to_dict,
    validate,
)
from bioprop_cli.errors import UserError
from bioprop_cli.rules import available_rules, check_config

ALL_RULES = tuple(available_rules())


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def user_error(excinfo: pytest.ExceptionInfo) -> str:
    """The message of a UserError, checked to be a single non-empty line."""
    message = str(excinfo.value)
    assert message and "\n" not in message and "\r" not in message, f"not one line: {message!r}"
    return message


def load_error(overrides) -> str:
    with pytest.raises(UserError) as excinfo:
        load_config(None, overrides)
    return user_error(excinfo)


# --- defaults -----------------------------------------------------------------------------------


def test_defaults_load_and_validate():
    config = load_config()
    assert config == Config()
    assert validate(config) is config
    # the defaults are valid values of their declared types (not, e.g., a list where a tuple is declared)
    assert isinstance(config.optimizer.schedule.boundaries, tuple)
    assert isinstance(config.optimizer.lr, float) and config.optimizer.lr > 0
    assert isinstance(config.model.depth, int) and config.model.depth >= 1
    assert config.rule in ALL_RULES


def test_empty_yaml_file_gives_defaults(tmp_path):
    assert load_config(write(tmp_path / "empty.yaml", "")) == Config()


@pytest.mark.parametrize("rule", ALL_RULES)
def test_every_known_rule_is_accepted(rule):
    assert load_config(None, [("rule", rule)]).rule == rule


# --- precedence: defaults < file < overrides --------------------------------------------------


def test_file_then_overrides_precedence(tmp_path):
    path = write(
        tmp_path / "c.yaml",
        "rule: fa\nmodel:\n  depth: 4\n  width: 64\noptimizer:\n  lr: 0.01\n  schedule:\n    name: exponential\n",
    )
    config = load_config(path, [("model.depth", 5), ("optimizer.schedule.final_fraction", 0.5)])
    assert config.model.depth == 5  # override beats file
    assert config.model.width == 64  # file beats default, and survives an override of a sibling key
    assert config.model.activation == Config().model.activation  # default where neither says anything
    assert config.rule == "fa"
    assert config.optimizer.lr == 0.01
    assert config.optimizer.schedule.name == "exponential"  # file, nested two levels deep
    assert config.optimizer.schedule.final_fraction == 0.5  # override, nested two levels deep
    assert config.optimizer.name == Config().optimizer.name


def test_file_beats_defaults(tmp_path):
    config = load_config(write(tmp_path / "c.yaml", "seed: 7\ntrain:\n  epochs: 3\n"))
    assert config.seed == 7 and config.train.epochs == 3
    assert config.train.batch_size == Config().train.batch_size


def test_later_override_wins():
    assert load_config(None, [("model.depth", 3), ("model.depth", 4)]).model.depth == 4


def test_overrides_from_parse_override_text(tmp_path):
    path = write(tmp_path / "c.yaml", "data:\n  train_limit: 100\n")
    overrides = [parse_override(t) for t in ["optimizer.lr=0.01", "data.train_limit=null", "rule=dfa"]]
    config = load_config(path, overrides)
    assert config.optimizer.lr == 0.01
    assert config.data.train_limit is None  # null in an override replaces the file's value
    assert config.rule == "dfa"


# --- parse_override ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, key, value",
    [
        ("optimizer.lr=0.01", "optimizer.lr", 0.01),
        ("data.train_limit=null", "data.train_limit", None),
        ("model.depth=3", "model.depth", 3),
        ("rule=fa", "rule", "fa"),
        ("alignment.enabled=false", "alignment.enabled", False),
        ("optimizer.schedule.boundaries=[1, 2.5]", "optimizer.schedule.boundaries", [1, 2.5]),
        (" model.width = 64 ", "model.width", 64),
        ("experiment=a=b", "experiment", "a=b"),
    ],
)
def test_parse_override_values(text, key, value):
    parsed_key, parsed_value = parse_override(text)
    assert parsed_key == key
    assert parsed_value == value
    assert type(parsed_value) is type(value)


@pytest.mark.parametrize("text", ["optimizer.lr", "no-equals-sign", "=0.01", "  =1"])
def test_parse_override_without_key_or_equals_is_a_user_error(text):
    with pytest.raises(UserError) as excinfo:
        parse_override(text)
    message = user_error(excinfo)
    assert "KEY.PATH=VALUE" in message and text in message


def test_parse_override_with_invalid_yaml_value():
    with pytest.raises(UserError) as excinfo:
        parse_override("optimizer.schedule.boundaries=[1, 2")
    assert "not valid YAML" in user_error(excinfo)


# --- YAML quirks: numbers --------------------------------------------------------------------


def test_yaml_exponent_without_dot_becomes_a_float(tmp_path):
    assert yaml.safe_load("lr: 1e-3") == {"lr": "1e-3"}  # the quirk this guards against
    config = load_config(write(tmp_path / "c.yaml", "optimizer:\n  lr: 1e-3\n  weight_decay: 5E-4\n"))
    assert config.optimizer.lr == 0.001 and isinstance(config.optimizer.lr, float)
    assert config.optimizer.weight_decay == 0.0005
    # the same through an override's text
    assert load_config(None, [parse_override("optimizer.lr=2e-2")]).optimizer.lr == 0.02


def test_integers_become_floats_for_float_keys():
    config = load_config(None, [("optimizer.lr", 1), ("optimizer.schedule.boundaries", [1, 2])])
    assert config.optimizer.lr == 1.0 and type(config.optimizer.lr) is float
    assert config.optimizer.schedule.boundaries == (1.0, 2.0)
    assert all(type(b) is float for b in config.optimizer.schedule.boundaries)


def test_non_numeric_text_for_a_float_is_rejected():
    message = load_error([("optimizer.lr", "fast")])
    assert "optimizer.lr" in message and "'fast'" in message


# --- strict errors: unknown keys ------------------------------------------------------------


def test_unknown_top_level_key(tmp_path):
    with pytest.raises(UserError) as excinfo:
        load_config(write(tmp_path / "c.yaml", "rule: fa\nbogus: 1\n"))
    message = user_error(excinfo)
    assert "'bogus'" in message
    for allowed in ("rule", "model", "optimizer", "alignment"):
        assert allowed in message


def test_unknown_nested_key_lists_allowed_keys():
    message = load_error([("model.bogus", 1)])
    assert "'model.bogus'" in message
    for allowed in ("model.depth", "model.width", "model.activation", "model.loss", "model.init"):
        assert allowed in message


def test_unknown_key_two_levels_deep():
    message = load_error([("optimizer.schedule.nme", "cosine")])
    assert "'optimizer.schedule.nme'" in message and "optimizer.schedule.name" in message


def test_override_through_a_non_section_value():
    message = load_error([("rule", "fa"), ("rule.x", 1)])  # 'rule' already holds a value, not a section
    assert "'rule.x'" in message and "not a section" in message
    assert "'rule'" in load_error([("rule.x", 1)])  # no value yet: the section becomes a mapping, wrong type


# --- strict errors: types --------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("model.depth", "abc", "integer"),
        ("model.depth", 2.5, "integer"),
        ("model.depth", True, "integer"),  # bool is an int subclass in Python: must still be refused
        ("model.width", None, "integer"),
        ("train.batch_size", "128", "integer"),
        ("optimizer.lr", True, "number"),
        ("optimizer.lr", [0.1], "number"),
        ("alignment.enabled", 1, "true or false"),
        ("alignment.enabled", "yes please", "true or false"),
        ("data.train_limit", "all", "integer or null"),
        ("data.data_dir", 5, "string or null"),
        ("rule", 5, "string"),
        ("optimizer.schedule.boundaries", 5, "list"),
        ("optimizer.schedule.boundaries", [1, "x"], "number"),
        ("model", "big", "mapping"),
        ("model.init", 3, "mapping"),
    ],
)
def test_wrong_type_is_a_one_line_error_naming_the_key(key, value, expected):
    message = load_error([(key, value)])
    assert f"'{key}'" in message
    assert expected in message


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("model.activation", "swish", ("tanh", "relu", "sigmoid", "hard_sigmoid")),
        ("model.loss", "hinge", ("cross_entropy", "mse")),
        ("optimizer.name", "lbfgs", ("sgd", "adam", "adamw", "rmsprop")),
        ("optimizer.schedule.name", "linear", ("constant", "cosine", "step")),
        ("model.init.scheme", "orthogonal", ("lecun_normal", "he_uniform")),
        ("data.dataset", "cifar1000", ("mnist", "fashion_mnist", "cifar10", "cifar100", "svhn", "tiny_imagenet")),
        ("data.normalization", "global", ("none", "per_channel")),
        ("data.augment", "mixup", ("none", "crop_flip")),
        ("feedback.distribution", "laplace", ("normal", "uniform")),
    ],
)
def test_literal_violation_lists_allowed_values(key, value, allowed):
    message = load_error([(key, value)])
    assert f"'{key}'" in message and repr(value) in message
    for option in allowed:
        assert option in message


def test_literal_does_not_accept_a_non_string_equal_value():
    assert "model.activation" in load_error([("model.activation", ["tanh"])])


# --- strict errors: ranges -------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value",
    [
        ("model.depth", 0),
        ("model.depth", -3),
        ("model.width", 0),
        ("optimizer.lr", 0),
        ("optimizer.lr", -0.1),
        ("train.batch_size", 0),
        ("train.eval_batch_size", 0),
        ("train.epochs", 0),
        ("alignment.every_epochs", 0),
        ("alignment.every_steps", -1),
        ("alignment.probe_size", 0),
        ("model.init.scale", 0),
        ("model.init.scale", -1.0),
        ("feedback.scale", 0),
        ("optimizer.momentum", 1.0),
        ("optimizer.momentum", -0.1),
        ("optimizer.weight_decay", -1e-4),
        ("optimizer.schedule.decay_rate", 0),
        ("optimizer.schedule.decay_rate", 1.5),
        ("optimizer.schedule.final_fraction", 1.5),
        ("optimizer.schedule.warmup_epochs", -1),
        ("optimizer.schedule.boundaries", [2, 0]),
        ("data.validation_size", -1),
        ("data.train_limit", 0),
        ("data.test_limit", 0),
        ("seed", -1),
        ("experiment", ""),
        ("experiment", "a/b"),
    ],
)
def test_out_of_range_is_a_one_line_error_naming_the_key(key, value):
    message = load_error([(key, value)])
    assert f"'{key}'" in message
    assert "must be" in message


@pytest.mark.parametrize(
    "key, value",
    [
        ("data.validation_size", 0),
        ("optimizer.momentum", 0.0),
        ("optimizer.schedule.decay_rate", 1.0),
        ("optimizer.schedule.final_fraction", 1.0),
        ("alignment.every_steps", 0),
        ("model.depth", 1),
        ("seed", 0),
    ],
)
def test_boundary_values_that_are_allowed(key, value):
    config = load_config(None, [(key, value)])
    section = config
    for part in key.split("."):
        section = getattr(section, part)
    assert section == value


@pytest.mark.parametrize("key", ["optimizer.lr", "model.init.scale", "feedback.scale"])
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_non_finite_numbers_are_rejected(key, value):
    message = load_error([parse_override(f"{key}={value}")])
    assert key in message and "finite" in message


def registry_error(overrides) -> str:
    """The rule registry's word on a loaded config (rules.check_config; config.validate does not look rules up)."""
    config = load_config(None, overrides)
    with pytest.raises(UserError) as excinfo:
        check_config(config)
    return user_error(excinfo)


def test_unknown_rule_with_a_newline_stays_one_line():
    message = registry_error([("rule", "a\nb")])
    assert "\n" not in message


def test_unknown_rule_lists_all_known_rules():
    message = registry_error([("rule", "nope")])
    assert "'nope'" in message
    for rule in ALL_RULES:
        assert rule in message


def test_seed_too_large_for_jax_is_a_user_error():
    assert "seed" in load_error([("seed", 2**31)])


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a b", "a\nb"])
def test_experiment_name_cannot_leave_the_results_dir(name):
    assert "experiment" in load_error([("experiment", name)])


# --- YAML files ------------------------------------------------------------------------------


def test_missing_config_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(UserError) as excinfo:
        load_config(path)
    assert str(path) in user_error(excinfo)


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path / "bad.yaml", "rule: fa\nmodel: [depth: 2\n")
    with pytest.raises(UserError) as excinfo:
        load_config(path)
    message = user_error(excinfo)
    assert str(path) in message and "not valid YAML" in message and "line" in message


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(UserError) as excinfo:
        read_yaml(write(tmp_path / "list.yaml", "- rule\n- fa\n"))
    assert "mapping" in user_error(excinfo)


def test_binary_config_file_is_a_user_error(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\x1f\x8b\x08\x00\xff\xfe\x00rule: fa\n")
    with pytest.raises(UserError) as excinfo:
        load_config(path)
    assert str(path) in user_error(excinfo)


# --- checks against the data -----------------------------------------------------------------


def test_check_against_data_returns_the_training_examples():
    config = load_config(None, [("data.train_limit", None), ("data.validation_size", 5000)])
    assert check_against_data(config, 60000) == 55000
    config = load_config(None, [("data.train_limit", 3000), ("data.validation_size", 500)])
    assert check_against_data(config, 60000) == 2500
    # a limit above what is available is capped at what is available
    config = load_config(None, [("data.train_limit", 10**6), ("data.validation_size", 100)])
    assert check_against_data(config, 1000) == 900


@pytest.mark.parametrize("validation_size", [3000, 4000])
def test_validation_size_must_be_below_the_examples(validation_size):
    config = load_config(None, [("data.train_limit", 3000), ("data.validation_size", validation_size)])
    with pytest.raises(UserError) as excinfo:
        check_against_data(config, 60000)
    message = user_error(excinfo)
    assert "'data.validation_size'" in message and "3000" in message


def test_batch_size_larger_than_training_data_after_validation():
    overrides = [("data.train_limit", 1000), ("data.validation_size", 500)]
    assert check_against_data(load_config(None, overrides + [("train.batch_size", 500)]), 60000) == 500
    config = load_config(None, overrides + [("train.batch_size", 501)])
    with pytest.raises(UserError) as excinfo:
        check_against_data(config, 60000)
    message = user_error(excinfo)
    assert "'train.batch_size'" in message and "500" in message


# --- frozen, round trip ----------------------------------------------------------------------


def test_config_is_frozen():
    config = load_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.rule = "fa"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.model.depth = 7  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.optimizer.schedule.boundaries = (1.0,)  # type: ignore[misc]
    assert config == Config()


def test_to_dict_round_trips_through_a_yaml_file(tmp_path):
    config = load_config(
        None,
        [
            ("rule", "frsf"),
            ("seed", 11),
            ("experiment", "sweep"),
            ("model.depth", 3),
            ("model.activation", "relu"),
            ("model.init.scheme", "he_uniform"),
            ("model.init.scale", 0.5),
            ("feedback.distribution", "uniform"),
            ("optimizer.name", "momentum"),
            ("optimizer.lr", 1e-5),
            ("optimizer.schedule.name", "step"),
            ("optimizer.schedule.boundaries", [2, 4.5]),
            ("data.data_dir", "/some/where"),
            ("data.train_limit", 3000),
            ("alignment.enabled", False),
        ],
    )
    plain = to_dict(config)
    assert plain["optimizer"]["schedule"]["boundaries"] == [2.0, 4.5]  # lists, not tuples
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(plain, sort_keys=False))  # safe_dump refuses tuples
    loaded = load_config(path)
    assert loaded == config
    assert loaded.optimizer.schedule.boundaries == (2.0, 4.5)
    assert to_dict(loaded) == plain


def test_to_dict_of_defaults_round_trips(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(to_dict(Config())))
    assert load_config(path) == Config()


def test_a_stored_config_is_checked_by_the_loaders_types():
    """config.check_stored (what `bioprop compare` reads a run's config.yaml with): the loader's own type
    checks on the keys this version knows; other versions' keys and names are left alone."""
    check_stored({"model": {"width": 32, "activation": "renamed_since", "gone_key": [1]}, "old_section": {"x": 1},
                  "optimizer": {"lr": None}})
    with pytest.raises(UserError) as excinfo:
        check_stored({"model": {"width": [32, 64]}})
    assert user_error(excinfo) == "config key 'model.width': expected an integer, got [32, 64]"
    with pytest.raises(UserError) as excinfo:
        check_stored({"optimizer": {"lr": float("inf")}})
    assert "optimizer.lr" in user_error(excinfo)
