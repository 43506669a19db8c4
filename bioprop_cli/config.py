"""Typed, frozen run configuration: YAML files, `key.path=value` overrides, strict validation.

A config is validated once, when it is built; every problem is a one-line `UserError` naming the
key and what is allowed (the CLI turns that into exit code 2, before anything is written).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import yaml

from bioprop_cli.data import host_memory_bytes
from bioprop_cli.datasets.registry import NAMES as DATASETS, facts as dataset_facts
from bioprop_cli.ep_options import COSTS, DYNAMICS, ESTIMATORS, HOLOMORPHIC_RHOS, OUTPUT_LAYERS
from bioprop_cli.errors import UserError
from bioprop_cli.models.arch import ARCHITECTURES, is_library

# unit_slope_sigmoid, half_slope_hard_sigmoid: Laborieux et al. 2021's mysig and my_hard_sig, rule ep only
# (bioprop_cli/models/energy.py)
Activation = Literal["tanh", "relu", "sigmoid", "hard_sigmoid", "unit_slope_sigmoid", "half_slope_hard_sigmoid"]
EP_ONLY_ACTIVATIONS = ("unit_slope_sigmoid", "half_slope_hard_sigmoid")
Loss = Literal["cross_entropy", "mse"]
InitScheme = Literal[
    "lecun_normal", "lecun_uniform", "glorot_normal", "glorot_uniform", "he_normal", "he_uniform"
]
BiasInit = Literal["zeros", "fan_in_uniform"]  # bioprop_cli/models/layers.py init_params
Distribution = Literal["normal", "uniform"]
DFATarget = Literal["pooled", "pooled_conv", "pre_pool"]  # bioprop_cli/rules/library.make_stack
Dataset = Literal[DATASETS]  # the registry bioprop_cli/datasets/__init__.py
Storage = Literal["uint8", "float32"]  # bioprop_cli/splits.py
Stream = Literal["auto", "always", "never"]  # bioprop_cli/splits.py feed_plan
LabelKind = Literal["fine", "coarse"]  # cifar100's label bytes (bioprop_cli/datasets/cifar100.py)
Normalization = Literal["none", "per_channel", "given"]  # bioprop_cli/splits.py
Augmentation = Literal["none", "crop_flip"]  # bioprop_cli/augment.py
CropPadding = Literal["zeros", "edge"]  # bioprop_cli/augment.py
OptimizerName = Literal["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad"]
ScheduleName = Literal["constant", "cosine", "exponential", "warmup_cosine", "step"]
ScheduleEvery = Literal["step", "epoch"]
Estimator = Literal[ESTIMATORS]  # the second states bioprop_cli/ep.py implements (names: ep_options.py)
EPCost = Literal[COSTS]  # the mean-squared network's cost (bioprop_cli/ep.py)
EPFeedback = Literal["symmetric", "random", "sign", "mixed"]
EPDynamics = Literal[DYNAMICS]  # bioprop_cli/ep.py, models/energy.py
EPOutputLayer = Literal[OUTPUT_LAYERS]  # bioprop_cli/ep.py, models/energy.py
PCVariant = Literal["standard", "fixed_prediction", "zero_divergence"]
Arch = Literal[tuple(ARCHITECTURES)]  # the registry, bioprop_cli/models/arch.py
ResNetShortcut = Literal["A", "B"]  # bioprop_cli/models/resnet.py
VGGPool = Literal["max", "none"]  # bioprop_cli/models/vgg.py
VGGNorm = Literal["none", "batch"]
PoolKind = Literal["max", "avg", "none"]
LiveLog = Literal["tensorboard", "wandb"]  # bioprop_cli/live.py


@dataclass(frozen=True)
class InitConfig:
    scheme: InitScheme = "lecun_normal"
    scale: float = 1.0  # multiplies the scheme's standard deviation
    bias: BiasInit = "zeros"  # fan_in_uniform: U(-1/sqrt(fan_in), +1/sqrt(fan_in)), torch.nn.Linear's and Conv2d's default


@dataclass(frozen=True)
class CNNConfig:
    """model.arch = cnn: conv layers (one entry per layer in each list), then dense hidden layers.
    The default is Laborieux et al. 2021's MNIST conv net (32@5x5, max pool 2, 64@5x5, max pool 2, 10)."""

    channels: tuple[int, ...] = (32, 64)
    kernels: tuple[int, ...] = (5, 5)
    strides: tuple[int, ...] = (1, 1)
    paddings: tuple[int, ...] = (0, 0)
    pools: tuple[PoolKind, ...] = ("max", "max")  # after each conv layer's activation
    pool_window: int = 2
    pool_stride: int = 2
    dense: tuple[int, ...] = ()  # widths of the dense hidden layers between the convs and the output


@dataclass(frozen=True)
class LeNetConfig:
    """model.arch = lenet (bioprop_cli/models/arch.py lenet)."""

    # false: model.activation after the 84-unit layer too, released biotorch's LeNetMNIST (0.0.16: relu4 after fc1);
    # true: none there, fc1 feeding fc2 directly, as an earlier revision of biotorch's file (commit 12b8a2c)
    linear_fc1: bool = False


@dataclass(frozen=True)
class ResNetConfig:
    """model.arch = resnet: He et al. 2016's CIFAR ResNet (bioprop_cli/models/resnet.py). Its activation is
    ReLU and its layers are its own: model.depth, model.width and model.activation do not apply."""

    depth: int = 20  # 6n + 2: 20, 32, 44, 56
    shortcut: ResNetShortcut = "A"  # A: identity, subsampled, zero-padded channels; B: 1x1 conv + BatchNorm
    width: int = 16  # channels of the first stage (then 2x, 4x)


@dataclass(frozen=True)
class VGGConfig:
    """model.arch = vgg (bioprop_cli/models/vgg.py): one entry per conv layer in channels, paddings, pools.
    The default is pcx's VGG-5 (configs/models/vgg5_pcx.yaml)."""

    channels: tuple[int, ...] = (128, 256, 512, 512)
    paddings: tuple[int, ...] = (1, 1, 1, 1)
    pools: tuple[VGGPool, ...] = ("max", "max", "max", "max")  # 2x2 max pooling after the activation, or none
    kernel: int = 3
    dense: tuple[int, ...] = ()  # widths of the dense hidden layers before the output layer
    norm: VGGNorm = "none"  # batch: BatchNorm after each convolution (then without bias)


@dataclass(frozen=True)
class ModelConfig:
    arch: Arch = "mlp"  # the registry's names (bioprop_cli/models/arch.py ARCHITECTURES)
    depth: int = 2  # mlp: number of HIDDEN layers; the network has depth + 1 weight matrices
    width: int = 256  # mlp: units per hidden layer
    activation: Activation = "tanh"
    init: InitConfig = field(default_factory=InitConfig)
    loss: Loss = "cross_entropy"
    cnn: CNNConfig = field(default_factory=CNNConfig)
    lenet: LeNetConfig = field(default_factory=LeNetConfig)
    resnet: ResNetConfig = field(default_factory=ResNetConfig)
    vgg: VGGConfig = field(default_factory=VGGConfig)


@dataclass(frozen=True)
class FeedbackConfig:
    """Feedback matrices of fa, dfa, the sign-symmetric rules and the learned feedback of kp and
    wm (Akrout et al. 2019; see bioprop_cli/rules/)."""

    distribution: Distribution = "uniform"  # as in Lillicrap et al. 2016 and Nøkland 2016
    scale: float = 1.0  # relative to the matching forward layer's init std (see docs/rules.md)
    # dfa on a conv layer: where D_l delivers the output error. pooled: a dense D_l onto the layer's output
    # after its pooling, then exactly back through the pooling and f' (Nøkland's ErrorFeedback after
    # SpatialMaxPooling); pooled_conv: the same place, through a kernel on the error tiled over the next
    # conv layer's output grid (biotorch's dfa Conv2d); pre_pool: a dense D_l onto the pre-activation,
    # bypassing the pooling. The same for dense layers (no pooling).
    dfa_target: DFATarget = "pooled"
    # kp: weight decay lambda added to the updates of W_l AND B_l (l >= 1), so that W_l^T - B_l
    # shrinks by (1 - lr lambda) per SGD step; wm: decay of B_l only (Delta B = eta x y^T - lambda B).
    # 0.003 trades kp's alignment against accuracy (measured: docs/implementation-notes.md).
    decay: float = 0.003
    # wm: std sigma of the noise injected into each layer's input in the mirror phase (the mirror
    # update y^T x / (batch sigma^2) is normalised by sigma^2, so sigma changes only its rounding).
    mirror_noise: float = 1.0
    # wm: the mirror term's learning rate relative to the optimizer's (eta in units of lr);
    # B_l relaxes to (mirror_lr_scale / decay) W_l^T: equal to decay by default, so |B_l| ~ |W_l|.
    mirror_lr_scale: float = 0.003


@dataclass(frozen=True)
class ScheduleConfig:
    name: ScheduleName = "cosine"
    warmup_epochs: float = 0.0  # warmup_cosine only
    decay_rate: float = 0.1  # exponential: factor reached at the end of training; step: factor per boundary
    boundaries: tuple[float, ...] = ()  # step: epochs at which the rate is multiplied by decay_rate
    final_fraction: float = 0.0  # cosine / warmup_cosine: final lr as a fraction of lr
    # cosine, as torch's CosineAnnealingLR(T_max, eta_min): the epochs it takes to reach its final rate, then held
    # (null: the whole run), and that final rate itself, the same for every layer (null: lr * final_fraction)
    period_epochs: float | None = None
    final_lr: float | None = None
    every: ScheduleEvery = "step"  # how often the rate changes: every step, or once per epoch (torch's per-epoch step)


@dataclass(frozen=True)
class OptimizerConfig:
    name: OptimizerName = "adam"
    lr: float = 1e-3
    momentum: float = 0.9  # momentum and nesterov only
    weight_decay: float = 0.0  # adamw: decoupled; every other optimizer: L2, wd * W added to the gradient (as torch's)
    layer_lr: tuple[float, ...] = ()  # per-layer multipliers of the update (one per weight matrix); () = all 1
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


@dataclass(frozen=True)
class DataConfig:
    dataset: Dataset = "mnist"
    data_dir: str | None = None  # else $BIOPROP_DATA_DIR, else the download cache (bioprop_cli/data.py)
    validation_size: int = 5000  # held out from the END of the training set
    train_limit: int | None = None  # use only the first N training examples (quick tests)
    test_limit: int | None = None  # use only the first N test examples
    # per_channel: subtract each colour channel's mean and divide by its standard deviation, both taken over the
    # training split only (not validation or test), from every split (splits.make_splits)
    normalization: Normalization = "none"
    # given: (x - channel_mean) / channel_std with these values, one per colour channel (e.g. a paper's constants)
    channel_mean: tuple[float, ...] = ()
    channel_std: tuple[float, ...] = ()
    # crop_flip: each training example of each step zero-padded by 4 pixels, a random window of the image's size,
    # and mirrored left-right with probability 1/2; on the device, from the step's key (augment.py). Never the
    # evaluation or the measurements.
    augment: Augmentation = "none"
    crop_padding: CropPadding = "zeros"  # crop_flip's padding: zeros, or edge (border pixels repeated, torchvision's 'edge')
    path: str | None = None  # dataset npz: the .npz file of your arrays (bioprop_cli/datasets/npz.py)
    label: LabelKind = "fine"  # cifar100: fine (100 classes) or coarse (20 superclasses)
    extra: bool = False  # svhn: extra_32x32.mat appended to the training split
    # uint8: a dataset of pixels stays uint8 on the device and is scaled / normalised inside the compiled step
    # (a quarter of float32's memory; the same inputs to float rounding, splits.to_inputs); float32: on the host
    storage: Storage = "uint8"
    # always: the training split stays in host memory and each chunk of data.stream_steps steps' examples is sent to
    # the device while the previous chunk computes (the same results as resident); never: it sits on the device;
    # auto: streamed when it takes more than data.device_memory bytes (null: half the device's memory, from jax's
    # memory statistics; none known, as on the CPU: resident). splits.feed_plan
    stream: Stream = "auto"
    stream_steps: int = 64
    device_memory: int | None = None


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 128
    eval_batch_size: int = 5000
    save_params: bool = True  # write the final parameters to params.npz (not for a diverged run)
    # A run diverges when an epoch's mean training loss exceeds this multiple of its initial loss
    # (the first step's, at the initial parameters), or any loss is non-finite; null: non-finite only.
    # Generous on purpose: runs that recover can sit far above their initial loss for a whole epoch
    # (measured: docs/implementation-notes.md).
    divergence_factor: float | None = 1000.0
    # checkpoints/last.npz every N epochs (bioprop_cli/checkpoint.py); null: every epoch once an epoch has
    # taken more than a minute, else only when the run stops (end, Ctrl-C, train.max_minutes)
    checkpoint_every: int | None = None
    max_minutes: float | None = None  # time budget: checkpoint and stop cleanly once spent (resume with --resume)
    # run each epoch in chunks of N steps: the progress bar, live curves, Ctrl-C, the time budget and checkpoints
    # act inside long epochs (null: an epoch is one chunk); a multiple of log.every_steps
    chunk_steps: int | None = None


@dataclass(frozen=True)
class LogConfig:
    """What a run reports while it trains (bioprop_cli/live.py)."""

    every_steps: int = 0  # > 0: training loss and accuracy of every N steps (steps.jsonl), written after each chunk
    live: tuple[LiveLog, ...] = ()  # tensorboard | wandb: live curves beside the JSON-lines logs (optional extras)


@dataclass(frozen=True)
class AlignmentConfig:
    enabled: bool = True
    every_epochs: int = 1  # measure after every N epochs (and once at initialisation)
    every_steps: int = 0  # > 0: also measure every N optimisation steps inside each epoch
    probe_size: int = 512  # fixed probe batch drawn once from the training split


@dataclass(frozen=True)
class EPConfig:
    """Equilibrium propagation (rule ep): settling dynamics and the gradient estimator."""

    beta: float = 0.5  # nudging strength
    # the second state(s) (bioprop_cli/ep.py): one-sided (0, +beta) | negative (-beta, 0) | symmetric
    # (+beta, -beta) | random-sign | clamped (output clamped to the target) | coupled (output clamped to
    # (1 - beta) s_L + beta y, coupled learning with eta = beta) | holomorphic (complex nudges at
    # holomorphic_points points on the circle |beta| = beta, Laborieux & Zenke 2022)
    estimator: Estimator = "symmetric"
    holomorphic_points: int = 4  # N, the points beta_k = beta exp(2 pi i k/N) of ep.estimator holomorphic (error O(beta^N))
    # half_squared: C = 1/2 |y - s_L|^2; squared: |y - s_L|^2, Scellier & Bengio's code (their nudge and
    # update are twice half_squared's at the same beta and learning rates); model.loss mse only
    cost: EPCost = "half_squared"
    # gradient: s <- s - eps dF/ds (Scellier & Bengio 2017); primitive: s <- (1 - eps) s + eps rho(dPhi/ds), the
    # state being the neurons' output, Laborieux et al. 2021's code at eps 1 (models/energy.py primitive_dynamics)
    dynamics: EPDynamics = "gradient"
    # clipped: the output layer has the hidden layers' rho (the hard sigmoid clips it to [0, 1]); linear: rho =
    # identity and an unbounded state on the output layer only (Scellier et al. 2023's DCHN; models/energy.py)
    output_layer: EPOutputLayer = "clipped"
    eps: float = 0.5  # step size of the discretised dynamics
    free_steps: int = 20  # T1
    nudged_steps: int = 4  # T2
    tolerance: float = 0.0  # a phase stops early once every example moves less than this (0: never)
    persistent: bool = False  # start each example's free phase from its last free equilibrium
    reference_steps: int = 1000  # settling budget of the exact gradient's free fixed point
    reference_tolerance: float = 1e-6
    adjoint_steps: int = 1000  # iterations of the adjoint (implicit differentiation) solve
    # Feedback weights B_l (layer l+1 -> layer l) instead of W_l^T (bioprop_cli/models/energy.py):
    # symmetric: B = W^T (tied, the energy-based network); random: drawn once, with |W_l|_F at
    # initialisation; sign: |W|_F/sqrt(#W) sign(W^T), recomputed from the current W every step;
    # mixed: cos(a) W^T + sin(a) R, R orthogonal to W^T with its norm (angle exactly a), tracks W.
    feedback: EPFeedback = "symmetric"
    feedback_angle: float = 45.0  # a in degrees, mixed only: the angle between B_l and W_l^T
    learn_feedback: bool = False  # B_l is a trainable parameter (starts as `feedback` says) learning W_l's update transposed


@dataclass(frozen=True)
class PCConfig:
    """Predictive coding (rule pc; bioprop_cli/rules/predictive_coding.py): inference of the value nodes."""

    inference_steps: int = 20  # gradient steps on the energy before the weights learn
    # step size of x <- x - inference_lr dF/dx: 0.1 trains stably; at 0.2 the inference of some
    # examples diverges as the weights grow (measured: docs/implementation-notes.md)
    inference_lr: float = 0.1
    # gamma, the output layer's precision (1/Sigma_L of Whittington & Bogacz 2017): the output
    # energy is gamma * loss and the update is divided by gamma; standard pc -> backprop as gamma -> 0.
    # 0.1: more accurate and closer to the gradient than jpc's and pcx's 1 (docs/implementation-notes.md)
    output_precision: float = 0.1
    # standard | fixed_prediction (predictions held at the feedforward pass) | zero_divergence
    # (Z-IL: rate 1, W_l learns at step L-1-l; fixes its own steps and rate)
    variant: PCVariant = "standard"


@dataclass(frozen=True)
class Config:
    rule: str = "bp"
    experiment: str = "default"
    seed: int = 0
    results_dir: str = "results"
    model: ModelConfig = field(default_factory=ModelConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    log: LogConfig = field(default_factory=LogConfig)
    ep: EPConfig = field(default_factory=EPConfig)
    pc: PCConfig = field(default_factory=PCConfig)


# Values that change no array shape and no branch of the program: runs that differ only in these
# train together as one compiled program, the values entering as traced arrays (train.train_group).
BATCHABLE_KEYS = (
    "seed",
    "optimizer.lr",
    "optimizer.momentum",
    "optimizer.weight_decay",
    "model.init.scale",
    "feedback.scale",
    "ep.beta",
)


def derive(config: Config, values: dict[str, Any]) -> Config:
    """`config` with the values at dotted keys replaced, typed and validated as a loaded config is (a
    bad value or key is a UserError naming it): the one way to derive a config from another. The
    rule presets are not applied again (the config is resolved already)."""
    tree = to_dict(config)
    for key, value in values.items():
        _set_path(tree, key, value)
    return validate(_build(Config, tree))


def with_values(config: Config, values: dict[str, Any]) -> Config:
    """`config` with the values at dotted keys replaced, NOT validated: the values may be traced
    arrays, inside training's compiled program (every other change: derive)."""
    for key, value in values.items():
        config = _replace_path(config, key.split("."), value)
    return config


def _replace_path(node, parts: list[str], value):
    head, rest = parts[0], parts[1:]
    return dataclasses.replace(node, **{head: _replace_path(getattr(node, head), rest, value) if rest else value})


def shape_key(config: Config) -> Config:
    """What runs trained together must share: the config with every batchable value neutralised."""
    return with_values(config, {key: get_value(Config(), key) for key in BATCHABLE_KEYS})


def get_value(config: Config, key: str) -> Any:
    """The value at a dotted key, e.g. get_value(config, "optimizer.lr")."""
    node = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _ep_preset(tree: dict) -> dict:
    """Equilibrium propagation: Scellier & Bengio 2017's MNIST network and dynamics (784-500-10,
    hard sigmoid, eps 0.5, T1 = 20, T2 = 4, batch 20, learning rates 0.1 and 0.05 for the two
    layers; the per-layer rates apply to that depth only).

    With a linear output layer (ep.output_layer linear) the weights start at half the scheme's scale,
    Scellier et al. 2023's gain 0.5 for their deep Hopfield networks (energy-based-learning,
    papers/ebl-algorithms/comparative-study.py, `--gain 0.5`): at full scale the unbounded output
    makes the output layer's rate unstable (docs/contrastive.md)."""
    model = tree.get("model", {}) if isinstance(tree.get("model"), dict) else {}
    ep = tree.get("ep", {}) if isinstance(tree.get("ep"), dict) else {}
    optimizer = {"name": "sgd", "lr": 0.1, "schedule": {"name": "constant"}}
    if model.get("depth", 1) == 1 and model.get("arch", "mlp") == "mlp":
        optimizer["layer_lr"] = [1.0, 0.5]
    init = {"scheme": "glorot_uniform"} | ({"scale": 0.5} if ep.get("output_layer") == "linear" else {})
    return {
        "model": {"depth": 1, "width": 500, "activation": "hard_sigmoid", "loss": "mse", "init": init},
        "optimizer": optimizer,
        "train": {"epochs": 25, "batch_size": 20},
    }


# Defaults that a rule brings with it, applied under the config file and the overrides.
RULE_PRESETS: dict[str, Callable[[dict], dict]] = {"ep": _ep_preset}


# ----------------------------------------------------------------------------------------------
# Building a config from plain data, with strict type checks.


_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp) or tp is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str, names_open: bool = False) -> Any:
    """Checks `value` against the annotation `tp`; returns it converted (int -> float, list -> tuple). With
    `names_open`, a key that takes one of a list of names takes any string (a stored run's name may have
    been renamed since)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"config key '{key}': expected a mapping, got {value!r}")
        return _build(tp, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key, names_open)
            except UserError:
                continue
        raise UserError(f"config key '{key}': expected {_describe(tp)}, got {value!r}")
    if origin is Literal:
        if (names_open or value in typing.get_args(tp)) and isinstance(value, str):
            return value
        raise UserError(f"config key '{key}': expected {_describe(tp)}, got {value!r}")
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else None
        if items is None:
            raise UserError(f"config key '{key}': expected {_describe(tp)}, got {value!r}")
        return tuple(_coerce(v, typing.get_args(tp)[0], key, names_open) for v in items)
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads '1e-3' (no dot) as a string
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise UserError(f"config key '{key}': expected a finite number, got {value!r}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is dict:  # a free mapping (a preset's `where:`), its keys checked by its reader
        if isinstance(value, dict):
            return value
    raise UserError(f"config key '{key}': expected {_describe(tp)}, got {value!r}")


def _build(cls: type, values: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        raise UserError(
            f"unknown config key '{prefix}{unknown[0]}'; allowed here: {', '.join(prefix + n for n in names)}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in values.items()}
    return cls(**kwargs)


def check_stored(tree: dict, cls: type = Config, prefix: str = "") -> None:
    """A stored config.yaml (a run of this version or another) against the schema's types, by the loader's
    own checks: each key this version knows holds a value of its type, null anywhere and any string where a
    key takes names; keys it does not know are left alone. UserError naming the key otherwise."""
    hints = typing.get_type_hints(cls)
    for key, value in tree.items():
        tp = hints.get(key)
        if tp is None or value is None:
            continue
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            check_stored(value, tp, f"{prefix}{key}.")
        else:
            _coerce(value, tp, prefix + key, names_open=True)


def to_dict(config: Any) -> dict:
    """The config as plain data (tuples as lists), ready for YAML/JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))


# ----------------------------------------------------------------------------------------------
# Range checks: things a type cannot say.


def _check(ok: bool, key: str, allowed: str, value: Any) -> None:
    if not ok:
        raise UserError(f"config key '{key}': must be {allowed}, got {value!r}")


MAX_NAME_LENGTH = 100  # an experiment is one folder name; file systems allow 255 bytes
# Arrays of the network's size that training holds at once: the parameters, their gradient, two
# optimizer moments (adam), feedback matrices and the reference gradient of the alignment measurement.
PARAMETER_COPIES = 6


def _check_memory(m: ModelConfig, network) -> None:
    """Refuses a network (models.arch.Architecture) whose float32 arrays alone would not fit in this machine's
    memory, before anything is allocated or written (a width of 50,000,000 would otherwise end in an
    allocation failure). Conv kernels and biases count like dense weights."""
    n_params = network.n_params
    need, have = 4 * PARAMETER_COPIES * n_params, host_memory_bytes()
    if have is not None and need > have:
        what = f"'model.width': {m.width} (depth {m.depth})" if m.arch == "mlp" else f"'model.arch': {m.arch}"
        raise UserError(
            f"config key {what} is too large: {n_params:,} parameters need about "
            f"{need / 2**30:,.0f} GiB in training (x{PARAMETER_COPIES} for gradients, optimizer state and feedback), "
            f"more than this machine's {have / 2**30:,.0f} GiB")


def _check_cnn(c: CNNConfig) -> None:
    n = len(c.channels)
    _check(n >= 1, "model.cnn.channels", "at least one conv layer", list(c.channels))
    for key in ("kernels", "strides", "paddings", "pools"):
        value = getattr(c, key)
        _check(len(value) == n, f"model.cnn.{key}", f"one entry per conv layer ({n}, as model.cnn.channels)", list(value))
    for key, low in (("channels", 1), ("kernels", 1), ("strides", 1), ("paddings", 0), ("dense", 1)):
        value = getattr(c, key)
        _check(all(v >= low for v in value), f"model.cnn.{key}", f"integers >= {low}", list(value))
    _check(c.pool_window >= 1, "model.cnn.pool_window", ">= 1", c.pool_window)
    _check(c.pool_stride >= 1, "model.cnn.pool_stride", ">= 1", c.pool_stride)


def _check_resnet(r: ResNetConfig) -> None:
    from bioprop_cli.models.resnet import DEPTHS, valid_depth

    _check(valid_depth(r.depth), "model.resnet.depth", DEPTHS, r.depth)
    _check(r.width >= 1 and (r.shortcut == "B" or r.width % 2 == 0), "model.resnet.width",
           ">= 1, and even with shortcut A (it pads planes / 4 channels on each side of the subsampled input)", r.width)


def _check_vgg(v: VGGConfig) -> None:
    n = len(v.channels)
    _check(n >= 1, "model.vgg.channels", "at least one conv layer", list(v.channels))
    for key in ("paddings", "pools"):
        _check(len(getattr(v, key)) == n, f"model.vgg.{key}", f"one entry per conv layer ({n}, as model.vgg.channels)",
               list(getattr(v, key)))
    for key, low in (("channels", 1), ("paddings", 0), ("dense", 1)):
        _check(all(x >= low for x in getattr(v, key)), f"model.vgg.{key}", f"integers >= {low}", list(getattr(v, key)))
    _check(v.kernel >= 1, "model.vgg.kernel", ">= 1", v.kernel)


def _check_architecture(config: Config):
    """The config's network (models.arch.Architecture), refused where a layer has no output left."""
    from bioprop_cli.models.arch import of_config, problem

    network = of_config(config)
    found = problem(network)
    _check(found is None, f"model.{ARCHITECTURES[config.model.arch].keys or 'arch'}",
           f"an architecture whose every layer has an output ({found})", config.model.arch)
    return network


def validate(config: Config) -> Config:
    """Checks ranges and cross-field constraints; returns the config unchanged. It builds no rule and opens
    no folder: what the rule registry knows (a known rule, one that runs on this network) is
    rules.check_config's, and whether the results folder can be made runs.check_results_folder's, both
    called where a command starts (cli/common.config_from_flags, the grid's points, reproduce)."""
    m, o, d, t, a = config.model, config.optimizer, config.data, config.train, config.alignment
    _check(0 <= config.seed < 2**31, "seed", "in [0, 2^31 - 1]", config.seed)
    _check(
        bool(_NAME.fullmatch(config.experiment)) and len(config.experiment) <= MAX_NAME_LENGTH,
        "experiment",
        f"a folder name of at most {MAX_NAME_LENGTH} letters, digits, '.', '_' or '-' that does not start with '.'",
        config.experiment,
    )
    _check(m.depth >= 1, "model.depth", ">= 1 (the number of hidden layers)", m.depth)
    _check(m.width >= 1, "model.width", ">= 1", m.width)
    _check_cnn(m.cnn)
    _check_resnet(m.resnet)
    _check_vgg(m.vgg)
    network = _check_architecture(config)
    _check_memory(m, network)
    _check(m.init.scale > 0, "model.init.scale", "> 0", m.init.scale)
    fb = config.feedback
    _check(fb.scale > 0, "feedback.scale", "> 0", fb.scale)
    _check(fb.decay >= 0, "feedback.decay", ">= 0 (kp, wm)", fb.decay)
    _check(fb.mirror_noise > 0, "feedback.mirror_noise", "> 0 (the std of wm's mirror noise)", fb.mirror_noise)
    _check(fb.mirror_lr_scale > 0, "feedback.mirror_lr_scale", "> 0 (wm)", fb.mirror_lr_scale)
    _check(o.lr > 0, "optimizer.lr", "> 0", o.lr)
    _check(0 <= o.momentum < 1, "optimizer.momentum", "in [0, 1)", o.momentum)
    _check(o.weight_decay >= 0, "optimizer.weight_decay", ">= 0", o.weight_decay)
    s = o.schedule
    _check(s.warmup_epochs >= 0, "optimizer.schedule.warmup_epochs", ">= 0", s.warmup_epochs)
    _check(0 < s.decay_rate <= 1, "optimizer.schedule.decay_rate", "in (0, 1]", s.decay_rate)
    _check(0 <= s.final_fraction <= 1, "optimizer.schedule.final_fraction", "in [0, 1]", s.final_fraction)
    _check(all(b > 0 for b in s.boundaries), "optimizer.schedule.boundaries", "positive epochs", list(s.boundaries))
    for key in ("period_epochs", "final_lr"):
        _check(getattr(s, key) is None or s.name == "cosine", f"optimizer.schedule.{key}",
               "null unless optimizer.schedule.name is cosine", getattr(s, key))
    _check(s.period_epochs is None or s.period_epochs > 0, "optimizer.schedule.period_epochs", "> 0 or null",
           s.period_epochs)
    rates = [o.lr * m for m in o.layer_lr] or [o.lr]
    _check(s.final_lr is None or (0 <= s.final_lr <= min(rates) and s.final_fraction == 0), "optimizer.schedule.final_lr",
           f"null or in [0, {min(rates):g}] (the smallest layer's rate), with final_fraction 0", s.final_lr)
    _check(d.validation_size >= 0, "data.validation_size", ">= 0", d.validation_size)
    _check(d.train_limit is None or d.train_limit >= 1, "data.train_limit", ">= 1 or null", d.train_limit)
    _check(d.test_limit is None or d.test_limit >= 1, "data.test_limit", ">= 1 or null", d.test_limit)
    _check(d.path is None or d.dataset == "npz", "data.path", "null unless data.dataset is npz", d.path)
    _check(d.label == "fine" or d.dataset == "cifar100", "data.label", "fine unless data.dataset is cifar100", d.label)
    _check(not d.extra or d.dataset == "svhn", "data.extra", "false unless data.dataset is svhn", d.extra)
    image_shape = dataset_facts(d).image_shape
    _check(d.augment == "none" or len(image_shape) == 3, "data.augment",
           f"none for flat vectors (the data's examples are {image_shape[0]} values, not images)", d.augment)
    channels = image_shape[-1] if len(image_shape) == 3 else 1
    for key in ("channel_mean", "channel_std"):
        value = list(getattr(d, key))
        _check(len(value) == (channels if d.normalization == "given" else 0), f"data.{key}",
               f"one value per channel ({channels} for {d.dataset}) with data.normalization given, else empty", value)
    _check(all(v > 0 for v in d.channel_std), "data.channel_std", "positive", list(d.channel_std))
    _check(d.crop_padding == "zeros" or d.augment == "crop_flip", "data.crop_padding",
           "zeros unless data.augment is crop_flip (it pads the random crop)", d.crop_padding)
    _check(d.stream_steps >= 1 and d.stream_steps % max(config.log.every_steps, 1) == 0, "data.stream_steps",
           ">= 1 and a multiple of log.every_steps", d.stream_steps)
    _check(d.device_memory is None or d.device_memory >= 1, "data.device_memory",
           ">= 1 (bytes the training split may take on the device) or null (half the device's memory)", d.device_memory)
    _check(t.epochs >= 1, "train.epochs", ">= 1", t.epochs)
    _check(t.batch_size >= 1, "train.batch_size", ">= 1", t.batch_size)
    _check(t.eval_batch_size >= 1, "train.eval_batch_size", ">= 1", t.eval_batch_size)
    _check(t.divergence_factor is None or t.divergence_factor > 1, "train.divergence_factor",
           "> 1 (a multiple of the initial loss) or null (non-finite loss only)", t.divergence_factor)
    _check(t.checkpoint_every is None or t.checkpoint_every >= 1, "train.checkpoint_every",
           ">= 1 (epochs) or null (every epoch once one takes over a minute, else at the end)", t.checkpoint_every)
    _check(t.max_minutes is None or t.max_minutes > 0, "train.max_minutes", "> 0 or null (no budget)", t.max_minutes)
    _check(config.log.every_steps >= 0, "log.every_steps", ">= 0 (0: once per epoch)", config.log.every_steps)
    _check(t.chunk_steps is None or (t.chunk_steps >= 1 and t.chunk_steps % max(config.log.every_steps, 1) == 0),
           "train.chunk_steps", ">= 1 and a multiple of log.every_steps, or null (an epoch is one chunk)", t.chunk_steps)
    _check(len(set(config.log.live)) == len(config.log.live), "log.live", "each of tensorboard, wandb at most once",
           list(config.log.live))
    _check(a.every_epochs >= 1, "alignment.every_epochs", ">= 1", a.every_epochs)
    _check(a.every_steps >= 0, "alignment.every_steps", ">= 0 (0: only at epoch ends)", a.every_steps)
    _check(a.probe_size >= 1, "alignment.probe_size", ">= 1", a.probe_size)
    n_layers = len(network.layers)
    of = f"depth {m.depth}" if m.arch == "mlp" else f"model.arch {m.arch}"
    _check(
        len(o.layer_lr) in (0, n_layers), "optimizer.layer_lr",
        f"empty or one multiplier per weight layer ({n_layers} for {of})", list(o.layer_lr),
    )
    _check(all(v > 0 for v in o.layer_lr), "optimizer.layer_lr", "positive multipliers", list(o.layer_lr))
    _check(not o.layer_lr or not is_library(network), "optimizer.layer_lr",
           f"empty for model.arch {m.arch} (per-layer rates are the layer stacks': mlp, lenet, cnn)", list(o.layer_lr))
    e = config.ep
    _check(e.beta > 0, "ep.beta", "> 0 (the estimator sets the sign)", e.beta)
    _check(e.estimator != "coupled" or e.beta <= 1, "ep.beta",
           "in (0, 1] with ep.estimator coupled (beta is eta, the output's step towards the target)", e.beta)
    _check(e.estimator not in ("clamped", "coupled") or m.loss == "mse", "ep.estimator",
           "one-sided, negative, symmetric or random-sign with model.loss cross_entropy (clamped and coupled clamp "
           "the output layer, which the readout network does not have)", e.estimator)
    _check(e.output_layer == "clipped" or (m.loss == "mse" and e.dynamics == "gradient"), "ep.output_layer",
           "clipped with model.loss cross_entropy or ep.dynamics primitive (linear makes the mean-squared network's "
           "output layer s_L linear; the readout network's top layer is hidden)", e.output_layer)
    _check(e.cost == "half_squared" or (m.loss == "mse" and e.estimator not in ("clamped", "coupled")), "ep.cost",
           "half_squared with model.loss cross_entropy or the clamped second phases (squared weights the nudging "
           "of the mean-squared cost)", e.cost)
    _check(e.holomorphic_points >= 2, "ep.holomorphic_points", ">= 2 (the points on the circle of holomorphic EP)",
           e.holomorphic_points)
    _check(0 < e.eps <= 1, "ep.eps", "in (0, 1]", e.eps)
    _check(e.free_steps >= 1, "ep.free_steps", ">= 1", e.free_steps)
    _check(e.nudged_steps >= 1, "ep.nudged_steps", ">= 1", e.nudged_steps)
    _check(e.tolerance >= 0, "ep.tolerance", ">= 0", e.tolerance)
    _check(e.reference_steps >= 1, "ep.reference_steps", ">= 1", e.reference_steps)
    _check(e.reference_tolerance >= 0, "ep.reference_tolerance", ">= 0", e.reference_tolerance)
    _check(e.adjoint_steps >= 1, "ep.adjoint_steps", ">= 1", e.adjoint_steps)
    _check(0 <= e.feedback_angle <= 180, "ep.feedback_angle", "in [0, 180] degrees", e.feedback_angle)
    _check(config.pc.inference_steps >= 1, "pc.inference_steps", ">= 1", config.pc.inference_steps)
    _check(0 < config.pc.inference_lr <= 1, "pc.inference_lr", "in (0, 1]", config.pc.inference_lr)
    _check(config.pc.output_precision > 0, "pc.output_precision", "> 0", config.pc.output_precision)
    if config.rule == "ep":
        _check(m.activation != "relu", "model.activation",
               "hard_sigmoid, sigmoid, tanh, unit_slope_sigmoid or half_slope_hard_sigmoid for rule ep", m.activation)
        _check(m.activation != "half_slope_hard_sigmoid" or e.dynamics == "primitive", "model.activation",
               "hard_sigmoid, sigmoid, tanh or unit_slope_sigmoid with ep.dynamics gradient (half_slope_hard_sigmoid "
               "runs under ep.dynamics primitive only: its states would leave [0, 1])",
               m.activation)
        _check(e.estimator != "holomorphic" or m.activation in HOLOMORPHIC_RHOS, "model.activation",
               f"{', '.join(HOLOMORPHIC_RHOS)} with ep.estimator holomorphic (its states are complex; the hard sigmoids "
               "clip the state and have no complex extension)", m.activation)
        max_pooled = not is_library(network) and any(layer.pool is not None and layer.pool.kind == "max"
                                                      for layer in network.layers)
        _check(e.estimator != "holomorphic" or not max_pooled, "model.cnn.pools" if m.arch == "cnn" else "model.arch",
               "avg or none pooling with ep.estimator holomorphic (max pooling has no complex extension)",
               list(m.cnn.pools) if m.arch == "cnn" else m.arch)
        _check(m.arch == "mlp" or (e.feedback == "symmetric" and not e.learn_feedback), "ep.feedback",
               f"symmetric (and ep.learn_feedback false) for rule ep on model.arch {m.arch}: the conv energy's "
               "feedback is the transposed convolution of W", e.feedback)
    else:
        _check(m.activation not in EP_ONLY_ACTIVATIONS, "model.activation",
               f"tanh, relu, sigmoid or hard_sigmoid for rule {config.rule} ({m.activation} is rule ep's only)",
               m.activation)
    return config


def check_against_data(config: Config, n_train_available: int) -> int:
    """Checks sizes that depend on the data; returns the number of training examples."""
    d, t = config.data, config.train
    n = min(n_train_available, d.train_limit or n_train_available)
    _check(d.validation_size < n, "data.validation_size", f"smaller than the {n} training examples", d.validation_size)
    n_train = n - d.validation_size
    _check(t.batch_size <= n_train, "train.batch_size", f"<= the {n_train} training examples left after validation", t.batch_size)
    return n_train


# ----------------------------------------------------------------------------------------------
# Loading: defaults < YAML file < overrides.


def parse_override(text: str) -> tuple[str, Any]:
    """'optimizer.lr=0.01' -> ('optimizer.lr', 0.01); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"override '{text}': expected KEY.PATH=VALUE, e.g. optimizer.lr=0.01")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise UserError(f"override '{text}': the value is not valid YAML") from None
    return key.strip(), value


def keys_overlap(a: str, b: str) -> bool:
    """Whether setting dotted key `a` and setting `b` touch the same value (equal, or one is a
    section holding the other): 'model.depth' and 'model.depth.x' overlap, 'model.depth' and
    'model.width' do not."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _set_path(tree: dict, key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"config key '{key}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise UserError(f"config file '{path}' cannot be read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise UserError(f"config file '{path}' is not a text (UTF-8) file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" (line {where.line + 1})" if where else ""
        raise UserError(f"config file '{path}' is not valid YAML{line}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}': expected a mapping of keys at the top level")
    return data


def load_config(path: str | Path | None = None, overrides: list[tuple[str, Any]] = ()) -> Config:
    """Defaults, then the YAML file, then each (key.path, value) override; validated once."""
    tree = read_yaml(path) if path is not None else {}
    tree.pop("sweep", None)  # a config file's `sweep:` section is read by `bioprop sweep` only
    tree.pop("paper", None)  # a paper preset's published numbers (configs/papers/): `bioprop reproduce` only
    for key, value in overrides:
        _set_path(tree, key, value)
    rule = tree.get("rule", Config.rule)
    if isinstance(rule, str) and rule in RULE_PRESETS:
        tree = _merge(RULE_PRESETS[rule](tree), tree)
    return validate(_build(Config, tree))


def _merge(base: dict, top: dict) -> dict:
    """`top` over `base`, recursively for sections."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = _merge(merged[key], value)
        merged[key] = value
    return merged
