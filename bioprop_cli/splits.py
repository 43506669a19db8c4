"""What a run draws from its seed and its dataset: the PRNG keys, the splits on the device, the probe batch.

Training (train.py), the benchmark and every study (bioprop_cli/studies/) take these from here, so a
study measures on the examples, and with the keys, that a run with the same config and seed uses. The
splits are normalised here too (config `data.normalization`), the one place for it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bioprop_cli.config import Config, check_against_data
from bioprop_cli.data import as_float


class Keys(NamedTuple):
    params: jax.Array
    rule: jax.Array
    data: jax.Array  # data order: epoch e uses fold_in(data, e)
    steps: jax.Array  # per-step randomness of a rule (brsf): fold_in(steps, global step)
    probe: jax.Array


def derive_keys(seed: int) -> Keys:
    return Keys(*jax.random.split(jax.random.PRNGKey(seed), 5))


class PixelScale(NamedTuple):
    """Splits kept as uint8 pixels: the network's inputs are (pixel / 255 - mean) / std per channel, computed
    inside the compiled step (`to_inputs`), in float32 as make_splits computes them on the host for float storage."""

    mean: np.ndarray | None  # (C,) float32; None: no normalisation (pixel / 255 only)
    std: np.ndarray | None


def to_inputs(pixels: PixelScale | None, x):
    """A batch of stored examples -> the network's float32 inputs (x as it is for float storage)."""
    if pixels is None:
        return x
    scaled = x.astype(jnp.float32) / jnp.float32(255)
    if pixels.mean is None:
        return scaled
    channels = pixels.mean.shape[0]
    return ((scaled.reshape(-1, channels) - pixels.mean) / pixels.std).reshape(x.shape)


class Splits(NamedTuple):
    """Arrays on the device. Evaluation splits are padded to whole chunks, with a mask. With `pixels`, the x
    arrays are uint8 pixels, turned into inputs in the compiled step (to_inputs)."""

    x_train: jax.Array
    y_train: jax.Array
    x_val: jax.Array
    y_val: jax.Array
    mask_val: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    mask_test: jax.Array
    pixels: PixelScale | None = None


def _pad(x: np.ndarray, y: np.ndarray, chunk: int):
    n = len(x)
    padded = max(chunk, -(-n // chunk) * chunk)
    mask = np.zeros(padded, np.float32)
    mask[:n] = 1.0
    x = np.concatenate([x, np.zeros((padded - n,) + x.shape[1:], x.dtype)])
    y = np.concatenate([y, np.zeros(padded - n, y.dtype)])
    return jnp.asarray(x), jnp.asarray(y), jnp.asarray(mask)


def stays_uint8(dataset, keep_uint8: bool) -> bool:
    """Whether make_splits keeps the dataset's examples as uint8 pixels (`pixels`)."""
    return keep_uint8 and dataset.x_train.dtype == np.uint8 and dataset.x_test.dtype == np.uint8


def make_splits(config: Config, dataset, keep_uint8: bool = False, train_on_device: bool = True) -> Splits:
    """Training split, validation split (held out from the end of the training set), test split; each
    normalised with the training split's statistics when `data.normalization` is per_channel, with
    data.channel_mean and data.channel_std when it is given. keep_uint8: a dataset of uint8 pixels stays uint8
    on the device (a quarter of float32's memory), scaled and normalised in the compiled step (`pixels`).
    train_on_device False: x_train and y_train stay numpy arrays in host memory (streamed, feed_plan)."""
    d = config.data
    n_total = min(len(dataset.x_train), d.train_limit or len(dataset.x_train))
    n_train = check_against_data(config, len(dataset.x_train))
    x, y = dataset.x_train[:n_total], dataset.y_train[:n_total]
    n_test = min(len(dataset.x_test), d.test_limit or len(dataset.x_test))
    x_test = dataset.x_test[:n_test]
    uint8 = stays_uint8(dataset, keep_uint8)
    mean = std = None
    if d.normalization != "none":
        from bioprop_cli.datasets.registry import facts

        shape = facts(d).image_shape
        channels = shape[-1] if len(shape) == 3 else 1
        if d.normalization == "given":
            mean, std = np.asarray(d.channel_mean, np.float64), np.asarray(d.channel_std, np.float64)
        else:
            mean, std = channel_statistics(x[:n_train], channels)
    if uint8:
        pixels = PixelScale(None if mean is None else mean.astype(np.float32),
                            None if std is None else std.astype(np.float32))
    else:
        pixels, x, x_test = None, as_float(x), as_float(x_test)
        if mean is not None:
            x, x_test = normalise(x, mean, std), normalise(x_test, mean, std)
    chunk = config.train.eval_batch_size
    val = _pad(x[n_train:], y[n_train:], min(chunk, max(1, n_total - n_train)))
    test = _pad(x_test, dataset.y_test[:n_test], min(chunk, n_test))
    place = jnp.asarray if train_on_device else np.ascontiguousarray
    return Splits(place(x[:n_train]), place(_label_dtype(y[:n_train])), *val, *test, pixels)


def _label_dtype(y: np.ndarray) -> np.ndarray:
    """Labels as the device stores them (jnp.asarray: 64-bit integers become 32-bit ones)."""
    return y.astype(jnp.asarray(y[:1]).dtype, copy=False)


# auto: the training split stays on the device while it takes at most this share of the device's memory (the rest
# is for the parameters, the activations, the evaluation splits and the compiled program)
DEVICE_SHARE = 0.5


class FeedPlan(NamedTuple):
    """How the training split reaches the compiled step (config data.stream): resident on the device, or streamed
    from host memory in chunks of `chunk_steps` steps (train.py's ChunkFeeder)."""

    streamed: bool
    train_bytes: int  # the training split as stored: examples and labels
    limit_bytes: int | None  # what it may take on the device (data.device_memory, else DEVICE_SHARE of the device's)
    device_bytes: int | None  # the device's memory (jax's memory statistics; None where jax gives none)
    chunk_steps: int | None  # streamed: steps per chunk
    chunk_bytes: int  # streamed: one chunk's examples and labels, for one run

    def line(self) -> str:
        """The plan in one line, stated before training."""
        where = (f"; the device has {_size(self.device_bytes)}" if self.device_bytes is not None
                 else "; the device's memory is not known (jax gives no memory statistics: the CPU)")
        if not self.streamed:
            return f"data: training split {_size(self.train_bytes)}, resident on the device{where}"
        return (f"data: training split {_size(self.train_bytes)}, streamed from host memory in chunks of "
                f"{self.chunk_steps} steps ({_size(self.chunk_bytes)} each, up to three on the device at a time){where}")


def _size(n: int) -> str:
    return f"{n / 2**30:,.2f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def device_memory_bytes(device=None) -> int | None:
    """The memory of `device` (default: the first) as jax reports it (None on the CPU, where it reports none)."""
    stats = (device or jax.devices()[0]).memory_stats()
    return None if not stats else stats.get("bytes_limit")


def feed_plan(config: Config, dataset, device_bytes: int | None = None) -> FeedPlan:
    """Whether the training split of `config` on `dataset` streams (data.stream; auto: more than
    data.device_memory bytes, else more than DEVICE_SHARE of device_bytes), and its sizes."""
    d, t = config.data, config.train
    n_train = check_against_data(config, len(dataset.x_train))
    features = int(np.prod(dataset.x_train.shape[1:]))
    example = features * (1 if stays_uint8(dataset, config.data.storage == "uint8") else 4)
    example += _label_dtype(np.asarray(dataset.y_train[:1])).dtype.itemsize
    limit = d.device_memory if d.device_memory is not None else (
        None if device_bytes is None else int(DEVICE_SHARE * device_bytes))
    train_bytes = n_train * example
    streamed = d.stream == "always" or (d.stream == "auto" and limit is not None and train_bytes > limit)
    steps_per_epoch = n_train // t.batch_size
    chunk_steps = min(t.chunk_steps or steps_per_epoch, d.stream_steps, steps_per_epoch) if streamed else None
    return FeedPlan(streamed, train_bytes, limit, device_bytes, chunk_steps,
                    (chunk_steps or 0) * t.batch_size * example)


def channel_statistics(x: np.ndarray, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) standard deviation of flat channel-last images x (N, H*W*C), both of
    shape (C,), in float64 (two passes, a block at a time: no float64 copy of the whole split). A constant
    channel gets std 1 (it is only centred)."""
    values = x.reshape(-1, channels)
    mean = sum(block.sum(axis=0) for block in _float64_blocks(values)) / len(values)
    variance = sum(((block - mean) ** 2).sum(axis=0) for block in _float64_blocks(values)) / len(values)
    std = np.sqrt(variance)
    return mean, np.where(std > 0, std, 1.0)


def _float64_blocks(values: np.ndarray, rows: int = 1 << 20):
    """Blocks of float64 values; uint8 pixels as the float32 pixel / 255 that float storage holds."""
    for start in range(0, len(values), rows):
        yield as_float(values[start:start + rows]).astype(np.float64)


def normalise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(x - mean) / std per channel of flat channel-last images, in float32."""
    scaled = x.reshape(-1, mean.shape[0]) - mean.astype(np.float32)
    scaled /= std.astype(np.float32)
    return scaled.reshape(x.shape)


def probe_indices(key, n: int, size: int):
    """The positions in the training split (of n examples) of the probe batch drawn from `key`."""
    return jax.random.permutation(key, n)[: min(size, n)]


def draw_probe(key, x_train, y_train, size: int):
    """The fixed probe batch of alignment measurements: `size` training examples drawn from `key`;
    (x, y, their positions in the training split)."""
    idx = probe_indices(key, x_train.shape[0], size)
    return x_train[idx], y_train[idx], idx


def probe_batch(config: Config, splits: Splits, keys: Keys):
    """(x, y, positions) of the probe batch training measures on."""
    return draw_probe(keys.probe, splits.x_train, splits.y_train, config.alignment.probe_size)


def seed_probe(splits: Splits, seed: int, size: int):
    """(x, y, positions): `size` training examples drawn from the seed's probe key, as training draws its probe."""
    return draw_probe(derive_keys(seed).probe, splits.x_train, splits.y_train, size)
