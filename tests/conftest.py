"""Shared fixtures: the real MNIST folder (or a skip), a small fake in-memory dataset, a CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

# The suite's networks are tiny: XLA's compile time dominates, and its LLVM optimisation passes
# buy nothing at these sizes. Level 0 cuts the suite's time by about a third; XLA's older loop emitters
# (no MLIR fusion emitters) compile each program in about half the time again (docs/testing.md). Both
# keep fast-math off: the same operations, rounded alike up to the order of a few reductions' terms.
# XLA splits each program's generated code into up to 32 modules compiled apart (for many cores); the suite's
# programs are small and compile faster as one module (measured: docs/testing.md). The same kernels.
# Set before the first computation initialises the backend.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false "
                                   "--xla_cpu_parallel_codegen_split_count=1")
# Lowering attaches each operation's Python traceback (up to 100 frames, deep under pytest) to its MLIR location;
# the suite's thousands of small programs spend part of their lowering there (docs/testing.md). Metadata only: the
# compiled programs and the compilation cache's keys are the same without it.
os.environ.setdefault("JAX_INCLUDE_FULL_TRACEBACKS_IN_LOCATIONS", "false")
# One terminal width for every test, whatever the terminal running the suite: rich reads COLUMNS when a
# console is made (bioprop's at import, typer's help on each call). Paths are never wrapped at any width
# (tests/cli/test_cli_hardening.py checks a narrow console); tables and help text are laid out to this width.
os.environ["COLUMNS"] = "120"

import pytest
from typer.testing import CliRunner

from bioprop_cli.data import Dataset
from helpers import make_fake_dataset

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def pytest_configure(config) -> None:
    """JAX's persistent compilation cache for the session: every compiled program is kept in pytest's
    cache folder, one folder per xdist worker (.pytest_cache/d/jax-compilation-cache/<worker>), so a
    program compiled again (by another test of that worker, a test's subprocess, or the next session)
    is read back instead of recompiled. The environment carries it to subprocesses; a
    JAX_COMPILATION_CACHE_DIR already set wins, and `-p no:cacheprovider` turns it off. No size bound:
    JAX's eviction lists and reads the whole folder at every write (quadratic in the programs written)
    and its lock is only needed when two processes write one folder, which a folder per worker avoids."""
    cache = getattr(config, "cache", None)
    if cache is None or "JAX_COMPILATION_CACHE_DIR" in os.environ or starts_workers(config):
        return
    settings = {
        "JAX_COMPILATION_CACHE_DIR": str(cache.mkdir("jax-compilation-cache") / os.environ.get("PYTEST_XDIST_WORKER", "main")),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",  # the suite's programs each compile in well under 1 s
    }
    os.environ.update(settings)
    import jax  # imported already (helpers); nothing has been compiled yet

    for name, value in settings.items():
        jax.config.update(name.lower(), float(value) if name.endswith("SECS") else value)


def starts_workers(config) -> bool:
    """True in the xdist controller that starts workers: each worker names its own cache folder."""
    return bool(getattr(config.option, "numprocesses", 0)) and "PYTEST_XDIST_WORKER" not in os.environ


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch, tmp_path_factory) -> None:
    """No test reads the user's download cache or reaches beyond this machine: an empty cache, a closed local port."""
    monkeypatch.setenv("BIOPROP_CACHE_DIR", str(tmp_path_factory.mktemp("download-cache")))
    monkeypatch.setenv("BIOPROP_DOWNLOAD_URL", "http://127.0.0.1:9")


@pytest.fixture(scope="session")
def mnist_dir() -> str:
    """The folder named by $BIOPROP_DATA_DIR holding the canonical MNIST IDX files; skips when unavailable."""
    path = os.environ.get("BIOPROP_DATA_DIR", "")
    if not path:
        pytest.skip("BIOPROP_DATA_DIR is not set (needs the real MNIST IDX files)")
    folder = Path(path)
    missing = [name for name in IDX_FILES if not (folder / name).is_file() and not (folder / f"{name}.gz").is_file()]
    if missing:
        pytest.skip(f"BIOPROP_DATA_DIR={path} lacks {', '.join(missing)}")
    return str(folder)


@pytest.fixture
def fake_dataset() -> Dataset:
    return make_fake_dataset()


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()
