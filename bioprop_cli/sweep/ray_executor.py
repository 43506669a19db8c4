"""`--executor ray`: each group (runs of one shape, trained together) is one Ray task, on a running cluster
(`--address`) or on a local Ray instance started for the sweep. Ray is an optional extra:
`pip install 'bioprop[ray]'`."""

from __future__ import annotations

from bioprop_cli.errors import UserError


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'bioprop[ray]' (or pip install ray)") from None
    return ray


class RayExecutor:
    """Submits every group at once; results are recorded as they arrive. The workers share the
    results folder with the driver (a local instance, or a cluster with a shared filesystem)."""

    def __init__(self, address: str | None = None, gpus_per_task: float = 0.0, cpus_per_task: float = 1.0):
        self.ray = import_ray()
        self.address, self.gpus, self.cpus = address, gpus_per_task, cpus_per_task

    def __call__(self, groups, dataset_loader, report):
        from bioprop_cli.sweep.grid import train_point

        ray = self.ray
        started_here = not ray.is_initialized()
        if started_here:
            if self.address:
                ray.init(address=self.address, log_to_driver=False)
            else:
                ray.init(include_dashboard=False, log_to_driver=False)
        try:
            task = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus)(train_point)
            futures = {task.remote(group, dataset_loader): group for group in groups}
            report(f"{len(futures)} groups submitted to Ray")
            while futures:
                done, _ = ray.wait(list(futures), num_returns=1)
                group = futures.pop(done[0])
                yield group, ray.get(done[0])
        finally:
            if started_here:
                ray.shutdown()
