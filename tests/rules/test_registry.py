"""The rule registry: each record's facts agree with the rule it builds, and a new rule is one record."""

import jax
import pytest

from bioprop_cli import rules
from bioprop_cli.config import load_config
from bioprop_cli.models.arch import dense
from bioprop_cli.models.layers import init_params
from bioprop_cli.rules import ENERGY, FEEDFORWARD, RULES, available_rules, flops, make_rule
from bioprop_cli.rules.base import transport_path
from helpers import run, small_config

SIZES = (4, 3, 2, 5)  # products: 4x3, 3x2, 2x5
ARCH = dense(SIZES)


def test_flop_formulas_by_hand():
    forward_and_weight_gradients = 2 * (2 * (12 + 6 + 10))  # 112
    assert flops.chained(ARCH) == forward_and_weight_gradients + 2 * (6 + 10)  # 144: delta through W_2^T, W_1^T
    assert flops.direct(ARCH, load_config()) == forward_and_weight_gradients + 2 * (5 * 3 + 5 * 2)  # 162: e (5) to each hidden layer
    assert flops.mirrored(ARCH) == 144 + 2 * 2 * (6 + 10)  # 208: noise through W_1, W_2 and y^T x
    ep = load_config(overrides=[("rule", "ep"), ("ep.free_steps", 7), ("ep.nudged_steps", 3), ("ep.estimator", "symmetric")])
    assert flops.settling_steps(ep) == 7 + 2 * 3
    assert flops.settling(ARCH, ep) == 24 + 13 * 4 * (6 + 10) + 24 + 4 * (6 + 10)


def test_families_split_the_registry():
    assert available_rules(ENERGY) == ["ep"]
    assert set(available_rules(FEEDFORWARD)) | {"ep"} == set(RULES)
    assert all(r.family in (ENERGY, FEEDFORWARD) for r in RULES.values())


@pytest.mark.parametrize("name", available_rules(FEEDFORWARD))
def test_the_recorded_feedback_path_is_the_rules_own(name):
    """"transpose": no feedback of its own; "chained": B_l for l >= 1 compared with W_l^T; "direct": D_l for
    every hidden layer compared with the linear part of backprop's path from the output."""
    info = RULES[name]
    config = load_config(overrides=[("rule", name), ("model.depth", 2), ("model.width", 3)])
    sizes = (4, 3, 3, 5)
    rule = make_rule(config, dense(sizes))
    key = jax.random.PRNGKey(0)
    params = init_params(key, dense(sizes), config.model.init.scheme, config.model.init.scale)
    if rule.init_params is not None:
        params = rule.init_params(key, params)
    feedback = rule.feedback(params, rule.init(key, params), key)
    if info.feedback == "transpose":
        assert feedback == {}
        return
    expected_layers = {"chained": [1, 2], "direct": [0, 1]}[info.feedback]
    assert sorted(feedback) == expected_layers
    for l, (_, reference) in feedback.items():
        want = params[l]["w"].T if info.feedback == "chained" else transport_path(dense(sizes), params, l)
        assert reference.shape == want.shape and bool((reference == want).all())


def test_locality_is_graded_for_every_rule_but_the_references():
    graded = {name for name, info in RULES.items() if info.locality is not None}
    assert graded == set(RULES) - {"bp", "ep"}
    assert {status for status, _ in (RULES[n].locality for n in graded)} <= {"holds", "partial"}


def test_a_new_rule_is_one_record(monkeypatch, tmp_path):
    """A record under a new name is enough for config validation, make_rule and training: the copy of fa
    trains exactly as fa does."""
    import functools

    import bioprop
    from bioprop_cli.rules import library

    # fa under another name: the library's fa with the config's default feedback settings
    record = RULES["fa"]._replace(name="fa-copy", title="a copy of fa",
                                  make=functools.partial(library.make, rule=bioprop.rule("fa")))
    monkeypatch.setattr(rules, "RULES", {**RULES, "fa-copy": record})
    assert "fa-copy" in available_rules(FEEDFORWARD)
    copy, _, _ = run(tmp_path / "copy", small_config(rule="fa-copy"))
    original, _, _ = run(tmp_path / "fa", small_config(rule="fa"))
    assert copy["rule"] == "fa-copy" and copy["status"] == "completed"
    assert copy["test_accuracy"] == original["test_accuracy"] and copy["best_val_accuracy"] == original["best_val_accuracy"]
