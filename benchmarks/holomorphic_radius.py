"""Holomorphic EP against the implicit gradient on one network, every phase settled, in float64, per radius
(docs/holomorphic_ep.md, "MNIST training at a large radius"): where the O(r^N) law holds and where it stops.

    python benchmarks/holomorphic_radius.py --run RUN_DIR --radii 0.001,0.01,0.03 --estimators symmetric,holomorphic-4
    python benchmarks/holomorphic_radius.py --run RUN_DIR --init lecun --radii 0.1,0.5,1
    python benchmarks/holomorphic_radius.py --run RUN_DIR --init fig3c --radii 0.1,1,10 --estimators symmetric,holomorphic-4,holomorphic-15

RUN_DIR: a `bioprop train` run of rule ep (its config.yaml; its params.npz unless --init): `--init lecun`
draws seed 0's lecun_normal x --scale (default 0.8796, the laborieux-zenke-2022-mlp preset's init), `--init fig3c` their
Fig. 3c scale, normal of std 0.05 x 0.8796 in every layer (their truncated normal's std), biases zero,
seed 1. The dynamics run at eps 0.5 (the fixed points do not depend on eps; their eps 1 oscillates),
settled to 1e-11 (T1 <= 6000, T2 <= 3000), on the first 32 training images of MNIST ($BIOPROP_DATA_DIR).
"""

import argparse
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from bioprop_cli import ep as eqprop  # noqa: E402
from bioprop_cli.config import load_config  # noqa: E402
from bioprop_cli.datasets import load_dataset  # noqa: E402
from bioprop_cli.models.arch import dense  # noqa: E402
from bioprop_cli.models.layers import init_params  # noqa: E402
from bioprop_cli.precision import cast_floats  # noqa: E402
from bioprop_cli.runs import load_params  # noqa: E402


def parameters(run: str, init: str, sizes: tuple, scale: float) -> list:
    if init == "trained":
        return cast_floats(load_params(run), jnp.float64)
    if init == "lecun":
        return cast_floats(init_params(jax.random.PRNGKey(0), dense(sizes), "lecun_normal", scale), jnp.float64)
    keys = jax.random.split(jax.random.PRNGKey(1), len(sizes) - 1)
    return [{"w": 0.05 * 0.8796 * jax.random.normal(k, (a, b), jnp.float64), "b": jnp.zeros((b,), jnp.float64)}
            for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", required=True)
    parser.add_argument("--init", choices=("trained", "lecun", "fig3c"), default="trained")
    parser.add_argument("--scale", type=float, default=0.8796, help="--init lecun: the scheme's scale")
    parser.add_argument("--radii", default="0.1,0.25,0.5,1")
    parser.add_argument("--estimators", default="symmetric,holomorphic-4,holomorphic-10")
    args = parser.parse_args()
    base = load_config(f"{args.run}/config.yaml")
    config = replace(base, ep=replace(base.ep, eps=0.5, free_steps=6000, nudged_steps=3000, tolerance=1e-11,
                                      reference_steps=6000, reference_tolerance=1e-11, adjoint_steps=3000))
    dataset = load_dataset("mnist", None)
    x = jnp.asarray(dataset.x_train[:32], jnp.float64)
    y = jax.nn.one_hot(dataset.y_train[:32], 10, dtype=jnp.float64)
    sizes = (x.shape[1],) + (base.model.width,) * base.model.depth + (10,)
    net = eqprop.network(config, parameters(args.run, args.init, sizes, args.scale), ())
    _, exact, misfit = jax.jit(lambda: eqprop.implicit_reference(config, net, x, y))()
    flat = lambda g: jnp.concatenate([jnp.ravel(layer["w"]) for layer in g])
    print(f"adjoint misfit {float(misfit):.1e}")
    for estimator in args.estimators.split(","):
        def estimate(r, estimator=estimator):
            drive0, free = eqprop.free_phase(config, net, x, y, eqprop.start_states(config, net, x),
                                             config.ep.free_steps, config.ep.tolerance)
            nudged = eqprop.second_phase(config, net, x, y, drive0, free.states, r, jax.random.PRNGKey(0),
                                         config.ep.nudged_steps, config.ep.tolerance, estimator)
            return nudged.grads, nudged.residual, free.residual

        estimate = jax.jit(estimate)
        for r in (float(v) for v in args.radii.split(",")):
            grads, nudged_residual, free_residual = estimate(r)
            g, e = flat(grads), flat(exact)
            error = float(jnp.linalg.norm(g - e) / jnp.linalg.norm(e))
            angle = np.degrees(np.arccos(min(float(jnp.dot(g, e) / (jnp.linalg.norm(g) * jnp.linalg.norm(e))), 1.0)))
            print(f"{estimator:15s} r {r:g}: rel error {error:.3e}  angle {angle:.3f}  nudged residual "
                  f"{float(nudged_residual):.1e}  free residual {float(free_residual):.1e}", flush=True)


if __name__ == "__main__":
    main()
