"""Per-op CPU times of one conv EP settling step on Laborieux et al.'s MNIST net (configs/experiments/ep_cnn_mnist_laborieux.yaml),
batch 100, each op in a jitted 50-step loop, best of 3 by time.process_time (docs/speed.md, "Conv EP against Laborieux's P_CNN"):
    OMP_NUM_THREADS=1 XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" taskset -c 1 python benchmarks/laborieux_cnn_ops.py
"""
import time, sys, jax, jax.numpy as jnp
from bioprop_cli.config import load_config
from bioprop_cli import ep as E
from bioprop_cli.models import conv_energy as C, energy as EN, winograd as W
from bioprop_cli.models.layers import init_params, pre_activation, pool, conv_transpose
cfg = load_config("configs/experiments/ep_cnn_mnist_laborieux.yaml", [])
arch = E.dynamics_architecture(cfg)
print(arch.layers)
params = init_params(jax.random.PRNGKey(0), arch, "lecun_uniform", 0.577, "fan_in_uniform")
n = 100
x = jax.random.uniform(jax.random.PRNGKey(1), (n, 784))
states = [jax.random.uniform(jax.random.PRNGKey(2 + i), (n, k)) for i, k in enumerate(arch.sizes[1:])]
y = jax.nn.one_hot(jnp.arange(n) % 10, 10)
rho = E.neuron_model(cfg)
drive0 = EN.input_drive(params, x, arch)
T = 50
def loop(f):
    @jax.jit
    def run(s):
        return jax.lax.fori_loop(0, T, lambda i, s: f(s), s)
    return run
def timeit(name, f, s):
    r = loop(f); jax.block_until_ready(r(s))
    best = 1e9
    for _ in range(3):
        t = time.process_time(); jax.block_until_ready(r(s)); best = min(best, time.process_time() - t)
    print(f"{name:40s} {best / T * 1e3:8.3f} ms/step (CPU)", flush=True)
L1 = arch.layers[1]
p1 = params[1]
timeit("full step", lambda s: EN.step(params, s, drive0, y, 0.0, rho, 1.0, arch=arch), states)
h = states[0]
timeit("conv2 forward (pre_activation)", lambda h: h + 1e-9 * pre_activation(L1.op, p1, h).reshape(n, -1)[:, :1], h)
a = pre_activation(L1.op, p1, h)
timeit("pool", lambda a: a + 1e-9 * jnp.sum(pool(L1.pool, a)), a)
above = states[1]
timeit("unpool", lambda a: a + 1e-9 * C.unpool(L1.pool, a, above.reshape(n, 4, 4, 64)), a)
g = C.unpool(L1.pool, a, above.reshape(n, 4, 4, 64))
timeit("conv_transpose", lambda g: g + 1e-9 * jnp.sum(conv_transpose(L1.op, p1["w"], g)), g)
timeit("spectral", lambda g: g + 1e-9 * jnp.sum(C.spectral_conv_transpose(L1.op, p1["w"], g)), g)
timeit("up_and_down layer 1", lambda h: h + 1e-9 * jnp.sum(C.up_and_down(L1, p1, h, above)[1]), h)
a = pre_activation(L1.op, p1, h)
pooled = pool(L1.pool, a)
timeit("pool+unpool+reshape", lambda a: a + 1e-9 * C.unpool(L1.pool, a, above.reshape(pooled.shape)), a)
timeit("drives", lambda s: [u + 1e-9 * d for u, d in zip(s, C.drives(arch, params, s, drive0))], states)
timeit("fwd+pool only", lambda h: h + 1e-9 * jnp.sum(pool(L1.pool, pre_activation(L1.op, p1, h))), h)
u = W.kernel_transform(p1["w"])
x4 = h.reshape((n,) + L1.op.in_shape)
timeit("winograd kernel transform", lambda w: w + 1e-9 * jnp.sum(W.kernel_transform(w)), p1["w"])
timeit("winograd forward", lambda x: x + 1e-9 * jnp.sum(W.correlate(x, u, 5)), x4)
timeit("winograd transposed", lambda g: g + 1e-9 * jnp.sum(W.correlate_transpose(g, u, 5, L1.op.in_shape)), g)
timeit("tied_fields", lambda x: x + 1e-9 * jnp.sum(C.tied_fields(L1.op, 2, x)), x4)
timeit("winograd_up_and_down", lambda h: h + 1e-9 * jnp.sum(C.winograd_up_and_down(L1, p1, h, above)[1]), h)
