"""The library's examples run, and do what they say."""

import importlib.util
from pathlib import Path

import jax
import numpy as np

import bioprop

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_add_a_rule_trains_and_measures():
    example = load("add_a_rule")
    results = example.main(steps=20)
    for first, last, _ in results.values():
        assert last < first
    assert results["bp"][2] < 0.01
    assert 1.0 < results["noisy_transport"][2] < results["fa"][2]


def test_the_new_rule_without_noise_is_backprop():
    example = load("add_a_rule")
    params = example.init_params(jax.random.PRNGKey(0))
    x, y = example.data(jax.random.PRNGKey(1), n=16)
    ups = [bioprop.update(rule, example.model, example.loss, params, (), jax.random.PRNGKey(2), x, y)
           for rule in (example.noisy_transport(0.0), bioprop.rule("bp"))]
    for u, v in zip(jax.tree_util.tree_leaves(ups[0].grads), jax.tree_util.tree_leaves(ups[1].grads)):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7)


def test_the_quick_start_in_docs_library_md_runs(capsys):
    text = (EXAMPLES.parent / "docs" / "library.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "docs/library.md", "exec"), {})
    angle = float(capsys.readouterr().out.strip())
    assert 0.0 < angle < 90.0  # fa's conv update, measured against jax.grad
