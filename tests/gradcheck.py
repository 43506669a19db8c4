"""Finite-difference checks of analytic gradients, shared by the EP tests."""

import jax


def random_directions(params, key, n: int) -> list:
    """`n` standard-normal directions with the structure of `params` (one key per direction)."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    out = []
    for k in jax.random.split(key, n):
        ks = jax.random.split(k, len(leaves))
        out.append(jax.tree_util.tree_unflatten(tree, [jax.random.normal(kk, l.shape, l.dtype) for kk, l in zip(ks, leaves)]))
    return out


def central_difference(loss, params, direction, h: float = 1e-5) -> float:
    """(loss(params + h d) - loss(params - h d)) / 2h: the derivative of `loss` along `direction`."""
    along = lambda sign: jax.tree_util.tree_map(lambda p, d: p + sign * h * d, params, direction)
    return (float(loss(along(1))) - float(loss(along(-1)))) / (2 * h)
