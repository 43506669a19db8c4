"""The registry of learning rules: one record per rule, the one home of its facts.

Everything that lists or classifies rules reads it: config validation, the CLI's help texts, the
sweep's `rule` axis, the report's rule order and colours, the conditions table (locality, direct
feedback), the bench's FLOP formula, the measurement the training loop runs, and the tests'
parametrisations. Adding a rule is one module and one record here.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Callable, Mapping, NamedTuple

from bioprop_cli.errors import UserError
from bioprop_cli.models.arch import is_library, of_config
from bioprop_cli.rules import equilibrium, flops, library, predictive_coding
from bioprop_cli.rules.base import Estimate, LearningRule

FEEDFORWARD = "feedforward"  # a network's forward pass, an error sent back; measured against jax.grad of its loss
ENERGY = "energy"  # settles to an equilibrium; measured against the implicit gradient at the fixed point

# Condition 5 of the conditions table: does the update read only what its synapse can see?
HOLDS, PARTIAL = "holds", "partial"


class RuleInfo(NamedTuple):
    name: str
    title: str  # what the rule is, for help texts and reports
    make: Callable[..., LearningRule]  # make(config, arch, n_train) -> LearningRule (arch: models.arch.Architecture)
    family: str  # FEEDFORWARD or ENERGY
    # How the error reaches a hidden layer: "transpose" (W^T: weight transport, the reference),
    # "chained" (layer to layer through B_l), "direct" (straight from the output through D_l),
    # "equilibrium" (the dynamics carry it)
    feedback: str
    # (status, how the update is formed) for condition 5; None for the reference (bp) and for the
    # energy family, whose conditions table grades locality from its own dynamics
    locality: tuple[str, str] | None
    flops: Callable[..., int]  # flops(arch, config): matrix-product FLOPs per example and training step
    # Whether the output layer's update is backprop's (the rule sends the loss's own output error):
    # then the mean update angle is taken over the hidden layers only
    exact_output: bool = True


_SIGN_TRANSPORT = "each feedback synapse must know its forward partner's sign (sign transport)"

RULES: Mapping[str, RuleInfo] = MappingProxyType({r.name: r for r in (
    RuleInfo("bp", "backpropagation (the reference)", library.make, FEEDFORWARD, "transpose", None, flops.chained),
    RuleInfo("fa", "feedback alignment (Lillicrap et al. 2016)", library.make, FEEDFORWARD, "chained",
             (HOLDS, "h_l^T delta_l: presynaptic activity x postsynaptic error, delta delivered by fixed B_l (no W^T)"),
             flops.chained),
    RuleInfo("dfa", "direct feedback alignment (Nøkland 2016)", library.make, FEEDFORWARD, "direct",
             (HOLDS, "h_l^T delta_l: presynaptic activity x postsynaptic error, delta = e D_l straight from the output"),
             flops.direct),
    RuleInfo("usf", "uniform sign-concordant feedback (Liao et al. 2016)", library.make, FEEDFORWARD,
             "chained", (PARTIAL, f"h_l^T delta_l, but B_l = s sign(W_l^T): {_SIGN_TRANSPORT}"), flops.chained),
    RuleInfo("frsf", "fixed random-magnitude sign-concordant feedback (Moskovitz et al. 2018)",
             library.make, FEEDFORWARD, "chained",
             (PARTIAL, f"h_l^T delta_l, but B_l = |R_l| sign(W_l^T): {_SIGN_TRANSPORT}"), flops.chained),
    RuleInfo("brsf", "batchwise random-magnitude sign-concordant feedback (Moskovitz et al. 2018)",
             library.make, FEEDFORWARD, "chained",
             (PARTIAL, f"h_l^T delta_l, but B_l = |R_l^t| sign(W_l^T): {_SIGN_TRANSPORT}"), flops.chained),
    RuleInfo("kp", "Kolen-Pollack: feedback learned by W's own update (Akrout et al. 2019)", library.make,
             FEEDFORWARD, "chained",
             (HOLDS, "h_l^T delta_l, and B_l learns by the same local product with weight decay (Kolen-Pollack)"),
             flops.chained),
    RuleInfo("wm", "weight mirror: feedback learned from noise (Akrout et al. 2019)", library.make,
             FEEDFORWARD, "chained",
             (HOLDS, "h_l^T delta_l, and B_l learns from local activity statistics (weight mirror)"), flops.mirrored),
    RuleInfo("ep", "equilibrium propagation (Scellier & Bengio 2017)", equilibrium.make, ENERGY, "equilibrium", None,
             flops.settling, exact_output=False),
    RuleInfo("pc", "predictive coding (Whittington & Bogacz 2017)", predictive_coding.make, FEEDFORWARD, "transpose",
             (PARTIAL, "x_l^T (e_{l+1} f'): presynaptic activity x the local prediction error, but inference sends the "
                       "errors down through W_l^T (symmetric feedback synapses)"),
             flops.predictive_coding, exact_output=False),  # the output learns from the relaxed output error
)})


def available_rules(family: str | None = None) -> list[str]:
    """The registered rule names, in the registry's order (optionally of one family)."""
    return [name for name, info in RULES.items() if family is None or info.family == family]


def rule_info(name: str) -> RuleInfo:
    try:
        return RULES[name]
    except KeyError:
        raise UserError(f"unknown rule {name!r}; known rules: {', '.join(RULES)}") from None


def rules_help() -> str:
    """The rule names for a CLI help text."""
    return ", ".join(RULES)


def make_rule(config, arch, n_train: int = 0) -> LearningRule:
    """Builds the rule `config.rule` for the network `arch` (network.architecture(config)) and the training-set
    size, for rules that keep per-example state. A network built on the library's feedback layers
    (models.graph.Network: resnet, vgg) is trained by rules/library.py, for the rules the library has."""
    info = rule_info(config.rule)
    if is_library(arch) and config.rule not in library.RULES:
        raise UserError(f"config key 'model.arch': {config.model.arch} is trained by the feedforward rules "
                        f"({', '.join(library.RULES)}); rule {config.rule} runs on mlp, lenet and cnn")
    if info.family == ENERGY and not is_library(arch) and not all(layer.activation for layer in arch.layers[:-1]):
        raise UserError("config key 'model.lenet.linear_fc1': true for the feedforward rules only (ep's energy has "
                        "rho on every hidden layer)")
    return info.make(config, arch, n_train)


def check_config(config) -> None:
    """The registry's word on a config (config.validate checks types, ranges and cross-field constraints only):
    a known rule (the unknown one is a UserError listing them), and one that runs on the config's network."""
    make_rule(config, of_config(config), 0)


__all__ = ["ENERGY", "FEEDFORWARD", "RULES", "Estimate", "LearningRule", "RuleInfo", "available_rules",
           "check_config", "make_rule", "rule_info", "rules_help"]
