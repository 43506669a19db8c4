"""The GPU run (issue 14): every measurement bioprop's GPU section needs, in one script, as JSON.

    benchmarks/gpu.sh --out DIR [--data-dir DIR] [--quick] [--budget-s 480]

(gpu.sh sets up the environment and runs this.) Steps, most important first; each is timed,
its exit code and the tail of its output recorded, and a failure does not stop the others:
  device       JAX's devices and versions, nvidia-smi -L
  tf32         benchmarks/tf32_angles.py: what TF32 does to the measured angles and EP's slope
  bench        bioprop bench, every rule (MLP and EP): examples/s and fraction of matmul peak
  seeds_8      benchmarks/batched_seeds.py --seeds 8 (target: 8 seeds together <= 2x one seed)
  sweep        bioprop sweep, depth 1-7 x bp, fa, dfa x 3 seeds, 2 epochs: wall time
  train_ep     bioprop train --rule ep, 3 epochs: examples/s
  seeds_64     benchmarks/batched_seeds.py --seeds 64 (one seed trained alone)
  tests        a quick subset of the test suite
Everything goes into DIR/gpu.json (rewritten after every step, so a run cut short keeps what
it measured) and DIR/gpu.log. Steps still waiting when --budget-s runs out are recorded as
skipped; a running step is stopped at its own limit or at the budget, whichever comes first.
--quick shrinks every step (small networks, a few thousand examples) so that the script runs on
a CPU in a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "bioprop_cli"]
# Quick mode: a few thousand examples, small networks (every step of the full run, shrunk).
SMALL_DATA = ["--set", "data.train_limit=3000", "--set", "data.validation_size=500", "--set", "data.test_limit=500"]


def steps(quick: bool, work: Path, data_dir: str) -> list[tuple[str, list[str], int, Path | None]]:
    """(name, command, time limit in s, JSON file the command writes or None)."""
    py = sys.executable
    small = SMALL_DATA if quick else []
    bench_rules = ["--rules", "bp,fa,ep", "--repeats", "1"] if quick else ["--repeats", "2"]
    net = ["--depth", "2", "--width", "32"] if quick else []
    seeds = (2, 4) if quick else (8, 64)
    sweep_grid = ["--grid", "depth=1,2", "--grid", "rule=bp,fa", "--seeds", "2", "--epochs", "1"] if quick else \
        ["--grid", "depth=1,2,3,4,5,6,7", "--grid", "rule=bp,fa,dfa", "--seeds", "3", "--epochs", "2"]
    ep_epochs = ["--epochs", "1", "--set", "alignment.probe_size=64"] if quick else ["--epochs", "3"]
    tests = ["tests/train/test_divergence.py", "tests/bench/test_bench_peak.py", "tests/train/test_precision.py"] if quick else \
        ["tests/train/test_train.py", "tests/train/test_divergence.py", "tests/train/test_precision.py", "tests/bench/test_bench_peak.py"]
    return [
        ("device", [py, str(ROOT / "benchmarks" / "gpu.py"), "--device-only", "--out", str(work / "device.json")], 60,
         work / "device.json"),
        ("tf32", [py, str(ROOT / "benchmarks" / "tf32_angles.py"), "--data-dir", data_dir, "--out", str(work / "tf32.json")]
         + (["--quick"] if quick else []), 150, work / "tf32.json"),
        ("bench", CLI + ["bench", *bench_rules, "--data-dir", data_dir, "--json", str(work / "bench.json"), *small], 240,
         work / "bench.json"),
        (f"seeds_{seeds[0]}", [py, str(ROOT / "benchmarks" / "batched_seeds.py"), "--seeds", str(seeds[0]), *net,
                               "--results-dir", str(work / f"seeds{seeds[0]}")], 180,
         work / f"seeds{seeds[0]}" / "batched_seeds.json"),
        ("sweep", CLI + ["sweep", *sweep_grid, "--data-dir", data_dir, "--results-dir", str(work / "sweep"), *small,
                         *(["--width", "32"] if quick else [])], 240, None),
        ("train_ep", CLI + ["train", "--rule", "ep", *ep_epochs, "--no-progress", "--data-dir", data_dir,
                            "--results-dir", str(work / "ep"), *small], 180, None),
        (f"seeds_{seeds[1]}", [py, str(ROOT / "benchmarks" / "batched_seeds.py"), "--seeds", str(seeds[1]), "--separate", "1",
                               *net, "--results-dir", str(work / f"seeds{seeds[1]}")], 180,
         work / f"seeds{seeds[1]}" / "batched_seeds.json"),
        ("tests", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], 150, None),
    ]


def device_info() -> dict:
    import jax
    import jaxlib
    import optax

    info = {
        "devices": [f"{d.device_kind} ({d.platform})" for d in jax.devices()],
        "versions": {"python": sys.version.split()[0], "jax": jax.__version__, "jaxlib": jaxlib.__version__,
                     "optax": optax.__version__},
        "default_matmul_precision": jax.config.jax_default_matmul_precision,
    }
    try:
        info["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["nvidia_smi"] = None
    return info


def summaries(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.rglob("summary.json"))]


def digest(name: str, work: Path) -> dict:
    """What the JSON of a step without its own JSON file says: the runs' summaries."""
    if name == "sweep":
        runs = summaries(work / "sweep")
        return {"runs": len(runs), "status": {s: sum(r["status"] == s for r in runs) for s in {r["status"] for r in runs}},
                "train_time_s": sum(r.get("train_time_s") or 0 for r in runs),
                "compile_time_s": sum(r.get("compile_time_s") or 0 for r in runs)}
    if name == "train_ep":
        keys = ("status", "epochs_completed", "examples_per_s", "train_time_s", "compile_time_s", "wall_time_s",
                "test_accuracy", "device", "layer_sizes")
        return {k: s.get(k) for s in summaries(work / "ep") for k in keys}
    return {}


def write(out: Path, results: dict) -> None:
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, out)


def run_step(command: list[str], limit: float, log) -> tuple[int | None, float, str]:
    """(exit code or None when stopped at the limit, seconds, last lines of the output)."""
    t0 = time.perf_counter()
    log.write(f"\n$ {' '.join(command)}\n")
    log.flush()
    with tempfile.TemporaryFile("w+") as output:
        try:
            rc = subprocess.run(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, timeout=limit).returncode
        except subprocess.TimeoutExpired:
            rc = None
        output.seek(0)
        text = output.read()
    log.write(text)
    log.flush()
    sys.stdout.write(text[-3000:])
    sys.stdout.flush()
    return rc, time.perf_counter() - t0, "\n".join(text.strip().splitlines()[-15:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True, help="folder for gpu.json and gpu.log")
    parser.add_argument("--data-dir", default=os.environ.get("BIOPROP_DATA_DIR"))
    parser.add_argument("--quick", action="store_true", help="shrink every step (CPU check)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="no step starts or runs past this")
    parser.add_argument("--device-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device_only:
        Path(args.out).write_text(json.dumps(device_info(), indent=2) + "\n")
        return
    if not args.data_dir or not Path(args.data_dir).is_dir():
        sys.exit(f"error: --data-dir: no MNIST folder at {args.data_dir!r} (the four IDX files; or set $BIOPROP_DATA_DIR)")
    os.environ["BIOPROP_DATA_DIR"] = str(Path(args.data_dir).resolve())  # batched_seeds.py and the tests read it
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bioprop-gpu-"))
    t_start = time.perf_counter()
    results = {"quick": args.quick, "work_dir": str(work), "steps": {}}
    with open(out / "gpu.log", "a") as log:
        for name, command, limit, produced in steps(args.quick, work, args.data_dir):
            left = args.budget_s - (time.perf_counter() - t_start)
            if left < 10:
                results["steps"][name] = {"skipped": "budget spent"}
                write(out / "gpu.json", results)
                continue
            print(f"== {name} (limit {min(limit, left):.0f} s)", flush=True)
            rc, seconds, tail = run_step(command, min(limit, left), log)
            step = {"rc": rc, "wall_s": round(seconds, 2)}
            if rc is None:
                step["stopped"] = f"at its limit of {min(limit, left):.0f} s"
            if produced is not None and produced.exists():
                step["result"] = json.loads(produced.read_text())
            step.update(digest(name, work))
            if rc != 0:
                step["output_tail"] = tail
            results["steps"][name] = step
            results["total_s"] = round(time.perf_counter() - t_start, 2)
            write(out / "gpu.json", results)
    print(json.dumps({k: {"rc": v.get("rc"), "wall_s": v.get("wall_s"), **({"skipped": v["skipped"]} if "skipped" in v else {})}
                      for k, v in results["steps"].items()}, indent=1))
    print(f"total {results.get('total_s')} s; results in {out / 'gpu.json'}")


if __name__ == "__main__":
    main()
