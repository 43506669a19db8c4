"""`bioprop bench`: throughput of every rule against the machine's matmul peak (placeholder until written)."""


def bench() -> None:
    """Benchmark every rule (one epoch of MNIST, 784-256x5-10 tanh, batch 128)."""
    raise NotImplementedError
