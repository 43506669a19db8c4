"""`bioprop jtranspose`: the nudged state shift against backprop's J^T e (metrics/jtranspose.py)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
from typer.testing import CliRunner

from bioprop_cli.cli import app
from bioprop_cli.metrics.jtranspose import asymmetric_networks, fixed_point_function
from bioprop_cli.models.energy import RHOS, input_drive, step, zero_states
from bioprop_cli.models.arch import dense
from bioprop_cli.models.layers import init_params
from bioprop_cli.precision import float64
from bioprop_cli.runs import read_jsonl


def test_implicit_vjp_of_the_fixed_point_is_the_vjp_through_converged_settling():
    """J^T e by implicit differentiation (custom_vjp) = jax.vjp through 300 unrolled settling steps."""
    with float64():
        sizes = (6, 5, 4, 3)
        params = init_params(jax.random.PRNGKey(0), dense(sizes), "glorot_uniform", 1.0)
        params = [{"w": p["w"], "b": p["b"] + 0.1} for p in params]
        params = asymmetric_networks(params, jax.random.PRNGKey(1), [60.0])[0][2]  # B != W^T
        x = jax.random.uniform(jax.random.PRNGKey(2), (5, 6), jnp.float64)
        y = jax.nn.one_hot(jnp.arange(5) % 3, 3, dtype=jnp.float64)
        rho = RHOS["hard_sigmoid"]
        zeros_u = zero_states(params, 5, jnp.float64)
        cotangent = lambda s: [jnp.zeros_like(a) for a in s[:-1]] + [s[-1] - y]
        s_star = fixed_point_function(params, x, rho, 0.5, 5000, 1e-13, 500, 1e-13)

        def unrolled(u):
            body = lambda s, _: (step(params, s, input_drive(params, x), y * 0, 0.0, rho, 0.5, u), None)
            return jax.lax.scan(body, zeros_u, None, length=300)[0]

        @jax.jit
        def both(u):
            s0, pull = jax.vjp(s_star, u)
            s1, pull_unrolled = jax.vjp(unrolled, u)
            return pull(cotangent(s0))[0], pull_unrolled(cotangent(s1))[0]

        implicit, through = both(zeros_u)
        for a, b in zip(implicit, through):
            np.testing.assert_allclose(a, b, atol=1e-10)
        assert float(jnp.abs(implicit[0]).max()) > 1e-3  # the error reaches the first layer


def test_jtranspose_end_to_end_small_beta_and_asymmetry(tmp_path, mnist_dir):
    (tmp_path / "jt").mkdir()
    (tmp_path / "jt" / "mine.txt").write_text("keep")  # an existing --out folder is never written into
    out = tmp_path / "jt-1"
    args = ["jtranspose", "--width", "32", "--batch", "6", "--x64", "--betas", "0.001,0.3", "--angles", "0,90",
            "--data-dir", mnist_dir, "--out", str(tmp_path / "jt")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "jt").iterdir()] == ["mine.txt"]
    assert sorted(p.name for p in out.iterdir()) == [".lock", "config.yaml", "jtranspose.jsonl", "jtranspose.png",
                                                     "jtranspose.points.jsonl", "manifest.json", "summary.json",
                                                     "table.txt"]
    assert (out / "jtranspose.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "angle(shift, -J^T e)" in (out / "table.txt").read_text()
    rows = read_jsonl(out / "jtranspose.jsonl")
    assert {(r["feedback"], r["asymmetry_deg"] if r["feedback"] != "sign" else None) for r in rows} == {
        ("symmetric", 0.0), ("mixed", 0.0), ("mixed", 90.0), ("sign", None)}
    pick = lambda kind, a, layer: next(r for r in rows if r["feedback"] == kind and r["beta"] == 0.001
                                       and r["asymmetry_deg"] == a and r["layer"] == layer)
    for layer in (1, 2):  # hidden and output: the shift is J^T e at small beta (float64)
        assert pick("symmetric", 0.0, layer)["angle"] < 1.0 and pick("mixed", 0.0, layer)["angle"] < 1.0
    assert pick("mixed", 90.0, 1)["angle"] > 60.0  # B orthogonal to W^T: the hidden layer's error is lost (89.5)
    assert all(r["free_residual"] < 1e-6 and r["precision"] == "float64" for r in rows)
    assert json.loads((out / "summary.json").read_text())["converged"] is True


def test_jtranspose_rejects_bad_input(tmp_path):
    for args, word in ((["--betas", "0.1,-1"], "--betas"), (["--angles", "200"], "--angles"), (["--batch", "0"], "--batch"), (["--max-steps", "x"], "--max-steps"),
                       (["--activation", "relu"], "model.activation"), (["--set", "ep.eps=3"], "ep.eps"),
                       (["--asymmetry-beta", "0.7"], "--asymmetry-beta"), (["--run", str(tmp_path)], "--run")):
        result = CliRunner().invoke(app, ["jtranspose", "--out", str(tmp_path / "never"), *args])
        assert result.exit_code == 2, (args, result.output)
        message = result.stderr if hasattr(result, "stderr") else result.output
        assert word in message and len(message.strip().splitlines()) == 1, (args, message)
    assert not (tmp_path / "never").exists()


def test_x64_measures_the_float32_network_cast(tmp_path, mnist_dir):
    """--x64: the same network (the float32 draw, cast) in float64, not another random one."""
    norms = {}
    for flag in ([], ["--x64"]):
        out = tmp_path / ("x64" if flag else "x32")
        args = ["jtranspose", "--width", "8", "--batch", "4", "--betas", "0.01", "--angles", "0", "--max-steps", "3000",
                "--data-dir", mnist_dir, "--out", str(out), *flag]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        rows = read_jsonl(out / "jtranspose.jsonl")
        norms[bool(flag)] = [r["reference_norm"] for r in rows if r["feedback"] == "symmetric"]
    np.testing.assert_allclose(norms[True], norms[False], rtol=1e-3)  # |J^T e| per layer: a property of the weights


def test_a_conv_net_gets_one_line_instead_of_an_empty_asymmetric_table(tmp_path, mnist_dir):
    """Conv EP has only symmetric feedback: no asymmetric networks are measured, and the output says so."""
    out = tmp_path / "jt"
    args = ["jtranspose", "--set", "model.arch=cnn", "--set", "model.cnn.channels=[2,2]", "--batch", "2",
            "--betas", "0.1", "--max-steps", "20", "--data-dir", mnist_dir, "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert {r["feedback"] for r in read_jsonl(out / "jtranspose.jsonl")} == {"symmetric"}
    line = "no asymmetric table: conv EP has only symmetric feedback (ep.feedback symmetric"
    for text in (result.output, (out / "table.txt").read_text()):
        text = " ".join(text.split())  # not the terminal's line breaks
        assert "symmetric feedback (B = W^T)" in text and line in text
        assert "feedback B != W^T" not in text
    import matplotlib.image

    height, width = matplotlib.image.imread(out / "jtranspose.png").shape[:2]
    assert width < 1.5 * height  # one panel (the symmetric one), no empty asymmetric panel beside it
