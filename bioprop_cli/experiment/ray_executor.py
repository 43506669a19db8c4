"""`--executor ray`: each group (runs of one shape, trained together) is one Ray task, on a running cluster
(`--address`) or on a local Ray instance started for the sweep. Ray is an optional extra:
`pip install 'bioprop[ray]'`.

A local instance listens on the loopback interface only (127.0.0.1): Ray otherwise binds its
services to the machine's network address, opening ports on the network of a laptop. Ray reads
that choice once, when it is imported, from RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER (ray_constants.
ENABLE_RAY_CLUSTER; "0": a single-machine instance on 127.0.0.1, as Ray does on macOS and Windows).
A cluster (`--address`) needs the network and a filesystem shared by every node (the results folder)."""

from __future__ import annotations

import contextlib
import json
import os

from bioprop_cli.errors import UserError

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def import_ray(local: bool = False):
    """The ray module; `local`: set up so that ray.init() starts an instance bound to 127.0.0.1."""
    if local:
        os.environ[LOOPBACK_ENV] = "0"
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'bioprop[ray]' (or pip install ray)") from None
    return ray


class RayExecutor:
    """Submits every group at once; results are recorded as they arrive. The workers share the
    results folder with the driver (a local instance, or a cluster with a shared filesystem)."""

    def __init__(self, address: str | None = None, gpus_per_task: float = 0.0, cpus_per_task: float = 1.0):
        self.ray = import_ray(local=address is None)
        self.address, self.gpus, self.cpus = address, gpus_per_task, cpus_per_task

    @contextlib.contextmanager
    def session(self):
        """Ray, initialised for the sweep (and shut down after it, if started here). A local instance
        that would not listen on 127.0.0.1 only is refused."""
        ray = self.ray
        if ray.is_initialized():
            yield ray
            return
        if self.address:
            ray.init(address=self.address, log_to_driver=False)
        else:
            ray.init(address="local", include_dashboard=False, log_to_driver=False)
        try:
            if not self.address:
                exposed = sorted({n["NodeManagerAddress"] for n in ray.nodes()} - {"127.0.0.1"})
                if exposed:
                    raise UserError(f"--executor ray: the local Ray instance listens on {', '.join(exposed)}, not only "
                                    f"127.0.0.1 (Ray was imported before bioprop could set {LOOPBACK_ENV}=0)")
            yield ray
        finally:
            ray.shutdown()

    def __call__(self, groups, dataset_loader, report, interrupted=lambda: False):
        """Yields (group, summaries) as groups finish. After Ctrl-C (`interrupted()`), the running
        tasks are asked to stop (their runs end 'interrupted' at the next epoch) and the tasks not
        started are cancelled (their runs stay queued)."""
        from bioprop_cli.experiment.runner import train_point

        with self.session() as ray:
            task = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus)(train_point)
            futures = {task.remote(group, dataset_loader): group for group in groups}
            report(f"{len(futures)} groups submitted to Ray")
            while futures and not interrupted():
                done, _ = ray.wait(list(futures), num_returns=1, timeout=0.5)
                for ref in done:
                    yield futures.pop(ref), ray.get(ref)
            for ref in futures:
                ray.cancel(ref)  # a running task gets a KeyboardInterrupt, a pending one never starts
            for ref, group in futures.items():
                try:
                    yield group, ray.get(ref)
                except (ray.exceptions.TaskCancelledError, ray.exceptions.RayTaskError):
                    yield group, stopped_runs(group)


def stopped_runs(group) -> list[dict]:
    """The summaries of a cancelled task's runs, as their folders tell (ray.get returns none): a run
    that never started stays queued, one that started and did not finish is interrupted."""
    summaries = []
    for run_dir in group.run_dirs:
        try:
            summary = json.loads((run_dir / "summary.json").read_text())
        except FileNotFoundError:
            summaries.append({"status": "queued"})
            continue
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            summary = {}
        done = isinstance(summary, dict) and summary.get("status") in ("completed", "diverged", "interrupted")
        summaries.append(summary if done else {"status": "interrupted"})
    return summaries
