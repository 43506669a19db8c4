"""The converters' examples run on tiny budgets and measure what they say: the output layer's update is exact
under fa, usf and kp (angle 0 to jax.grad), the hidden convs' are not."""

import importlib.util
import math
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, output_layer, rule",
                         [("flax_resnet", "Dense_0", "kp"), ("equinox_resnet", "head", "usf")])
def test_resnet_example_measures_each_layer(name, output_layer, rule, capsys, monkeypatch):
    monkeypatch.delenv("BIOPROP_DATA_DIR", raising=False)  # the synthetic images: the same test everywhere
    results = load(name).main(steps=2, rules=(rule,))
    printed = capsys.readouterr().out
    for rule, (first, last, angles) in results.items():
        assert math.isfinite(first) and math.isfinite(last)
        assert len(angles) == 5 and f"{rule}: loss" in printed
        assert angles[output_layer] < 1e-3  # the output layer's own update is the exact gradient
        hidden = [a for path, a in angles.items() if path != output_layer]
        assert all(1.0 < a < 179.0 for a in hidden)
