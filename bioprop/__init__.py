"""bioprop: biologically plausible learning rules for any JAX model.

Write the model with bioprop's feedback layers, each given its weight's feedback leaf:

    import bioprop, jax, optax

    def model(params, fb, x):                       # fb: like bioprop.kernels(params)
        h = jax.nn.relu(bioprop.conv(x, params["c"]["w"], params["c"]["b"], fb["c"]["w"], stride=2, padding=1))
        h = h.reshape(h.shape[0], -1)
        return bioprop.dense(h, params["d"]["w"], params["d"]["b"], fb["d"]["w"])

    def loss(logits, y):
        return optax.softmax_cross_entropy(logits, y).mean()

    rule = bioprop.rule("fa")                        # bp fa dfa usf frsf brsf kp wm
    state = bioprop.init(rule, key, model, params, x)   # the feedback, drawn from key
    opt = optax.adam(1e-3); opt_state = opt.init((params, state))
    for x, y in batches:
        key, step = jax.random.split(key)
        up = bioprop.update(rule, model, loss, params, state, step, x, y)   # up.loss, up.grads, up.feedback_grads
        updates, opt_state = opt.update((up.grads, up.feedback_grads), opt_state, (params, state))
        params, state = optax.apply_updates((params, state), updates)

The forward pass is the model's own. In the backward pass each feedback layer updates its weights by the
exact local vjp (x^T g) and sends its error below through the rule's feedback B instead of W; everything
else (activations, pooling, normalisation, residual adds) passes the error back exactly, as backprop.
Direct feedback (dfa) projects the output error e to every feedback layer's input (or to a `tap`).
`bioprop.measure` compares a rule's update with jax.grad of the same model, leaf by leaf.
See docs/library.md.
"""

from bioprop.core import Estimate, Update, estimate, feedback_arrays, init, kernels, sites, update
from bioprop.layers import Direct, Site, conv, dense, tap, transport
from bioprop.measure import angle_degrees, compare, measure, norm_ratio, relative_error
from bioprop.rules import RULES, Rule, rule

__all__ = ["RULES", "Direct", "Estimate", "Rule", "Site", "Update", "angle_degrees", "compare", "conv", "dense", "estimate",
           "feedback_arrays", "init", "kernels", "measure", "norm_ratio", "relative_error", "rule", "sites", "tap",
           "transport", "update"]
