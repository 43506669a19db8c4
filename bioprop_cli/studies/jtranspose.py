"""`bioprop jtranspose`: the nudged state shift of a layered EP network against backprop's J^T e.

The network is the one the config and seed initialise (network.init_state, drawn in float32; `--x64`
casts it), or a run's trained weights; the input batch is `n_batch` training images drawn from the
seed. The measurement and its derivation are bioprop_cli/metrics/jtranspose.py.
A Study (experiment/study.py) whose points are the networks: symmetric, mixed-<angle> per angle, sign
(a conv net: symmetric only); each network's records are kept as measured (jtranspose.points.jsonl), so
that the same command after Ctrl-C or kill -9 settles only the networks not yet measured.
Files: config.yaml, manifest.json, jtranspose.points.jsonl, jtranspose.jsonl (one record per network,
beta and layer), jtranspose.png, table.txt (the tables as printed), summary.json.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bioprop_cli.config import Config, to_dict
from bioprop_cli.errors import UserError
from bioprop_cli.experiment.manifest import load_manifest
from bioprop_cli.experiment.probe import batch, measuring
from bioprop_cli.experiment.runner import identity_name
from bioprop_cli.experiment.study import Measured, run_study
from bioprop_cli.metrics.jtranspose import jtranspose_networks, make_jtranspose_measure, network_records
from bioprop_cli.ep import dynamics_architecture, neuron_model
from bioprop_cli.network import architecture, init_state
from bioprop_cli.precision import cast_floats
from bioprop_cli.report.study_figures import plot_jtranspose
from bioprop_cli.report.study_tables import as_text, jtranspose_tables
from bioprop_cli.runs import create_run_dir, write_atomic
from bioprop_cli.splits import derive_keys


def network_name(config: Config, dataset) -> str:
    """The layer sizes joined by dashes, e.g. 784-500-10 (a conv net: its description, models/arch.py)."""
    return architecture(config, dataset.x_train.shape[1]).describe()


def _with_stored(fresh, stored, run_folder: Path, dtype) -> list[dict]:
    """The run's stored w and b of each layer (a learned "fb" is not used here) as `dtype`,
    checked against the config's network `fresh`."""
    if len(stored) != len(fresh):
        raise UserError(f"--run {run_folder}: params.npz has {len(stored)} layers, the config's network {len(fresh)}")
    params = []
    for l, layer in enumerate(fresh):
        entry = {}
        for name, value in layer.items():
            if name not in stored[l] or stored[l][name].shape != value.shape:
                raise UserError(f"--run {run_folder}: params.npz lacks '{l}.{name}' of shape {tuple(value.shape)}")
            entry[name] = jnp.asarray(stored[l][name], dtype)
        params.append(entry)
    return params


def _point_name(kind: str, a: float | None) -> str:
    return f"{kind}-{a:g}" if kind == "mixed" else kind


class JTransposeStudy:
    """The networks of metrics/jtranspose.jtranspose_networks, each settled over `betas` on one batch."""

    name = "jtranspose"

    def __init__(self, config: Config, dataset, n_batch: int, betas: list[float], angles: list[float],
                 asym_beta: float, x64: bool, stored=None, run_folder: Path | None = None):
        self.config, self.n_batch, self.betas, self.angles = config, n_batch, betas, angles
        self.asym_beta, self.x64, self.run_folder = asym_beta, x64, run_folder
        self.precision = "float64" if x64 else "float32"
        network = architecture(config, dataset.x_train.shape[1])
        self.sizes, self.name_of_network = list(network.sizes), network_name(config, dataset)
        _, initial, _ = init_state(config, network, config.seed)  # drawn in float32: --x64 casts the same network
        with measuring(x64) as dtype:
            params = cast_floats(initial, dtype)
            if stored is not None:  # checked here: a misfit is refused before the folder exists
                params, self.source = _with_stored(params, stored, run_folder, dtype), f"trained parameters of {run_folder}"
            else:
                self.source = ("fresh network" if run_folder is None
                               else "fresh network of the run's config (the run stored no parameters)")
            idx = np.sort(np.random.default_rng(config.seed).choice(len(dataset.x_train), n_batch, replace=False))
            self.x, self.y = batch(dataset.x_train[idx], dataset.y_train[idx], network.sizes[-1], dtype)
            self.networks = {_point_name(kind, a): (kind, a, net) for kind, a, net in jtranspose_networks(
                params, jax.random.fold_in(derive_keys(config.seed).rule, 2), angles, dynamics_architecture(config))}
        self._measure = None
        self.title = f"{self.name_of_network} {config.model.activation}, {self.source}, batch {n_batch}, {self.precision}"

    def settings(self) -> dict:
        return {"batch": self.n_batch, "betas": self.betas, "angles": self.angles, "asymmetry_beta": self.asym_beta,
                "precision": self.precision, "source": self.source}

    def points(self) -> list[str]:
        return list(self.networks)

    def measure(self, point: str) -> Measured:
        with measuring(self.x64):
            if self._measure is None:
                self._measure = make_jtranspose_measure(neuron_model(self.config), self.config.ep,
                                                        dynamics_architecture(self.config))
            records = network_records(self._measure, *self.networks[point], self.x, self.y, self.betas)
        for r in records:
            r["precision"] = self.precision
        return Measured({"records": records})

    def summarise(self, measured: list[Measured]) -> tuple[list[dict], dict]:
        records = [r for m in measured for r in m.row["records"]]
        ep = self.config.ep
        worst = max(max(r["free_residual"], r["nudged_residual"]) for r in records)
        converged = worst < ep.reference_tolerance
        note = (f"settling residuals <= {worst:.1e} (tolerance ep.reference_tolerance = {ep.reference_tolerance:g}, "
                f"budget --max-steps {ep.reference_steps}); largest adjoint misfit "
                f"{max(r['adjoint_misfit'] for r in records):.1e}")
        if not converged:
            unsettled = sorted({f"{r['feedback']} {r['asymmetry_deg']:.0f}°" for r in records
                                if max(r["free_residual"], r["nudged_residual"]) >= ep.reference_tolerance})
            note += f"; NOT CONVERGED: {', '.join(unsettled)} (raise --max-steps; float32 may not reach a tolerance below ~1e-6)"
        self.note = note
        summary = {
            "sizes": self.sizes, "activation": self.config.model.activation, "source": self.source, "batch": self.n_batch,
            "precision": self.precision, "betas": self.betas, "angles": self.angles, "asymmetry_beta": self.asym_beta,
            "converged": bool(converged), "max_steps": ep.reference_steps, "tolerance": ep.reference_tolerance,
            "max_residual": worst,
        }
        return records, summary

    def figures(self, rows: list[dict], summary: dict, folder: Path) -> None:
        """jtranspose.png and table.txt (the tables as printed, and the convergence note)."""
        plot_jtranspose(rows, folder / "jtranspose.png", summary["asymmetry_beta"], f"J^T e made visible: {self.title}")
        write_atomic(folder / "table.txt", as_text([*tables({"records": rows, "summary": summary, "title": self.title}),
                                                    self.note]))


def tables(result: dict) -> list:
    """The tables printed and written to table.txt (report/study_tables.py)."""
    return jtranspose_tables(result["records"], result["summary"]["asymmetry_beta"], result["title"])


def identity(study: JTransposeStudy) -> str:
    """<sizes>-<activation>-s<seed>-<precision>-<hash of the config (less where results go) and the settings>."""
    config = study.config
    content = {k: v for k, v in to_dict(config).items() if k not in ("results_dir", "experiment")}
    return identity_name(f"{study.name_of_network}-{config.model.activation}-s{config.seed}-{study.precision}",
                         {"base": content, **study.settings()})


def folder_for(study: JTransposeStudy, out: Path | None) -> Path:
    """`out` if new or holding this very study (resumed), else the next free name beside it (never over another
    folder's files); without `out`, RESULTS_DIR/jtranspose/<identity>: the same command, the same folder."""
    if out is None:
        return Path(study.config.results_dir) / "jtranspose" / identity(study)
    if not out.exists() or (out.is_dir() and (load_manifest(out) or {}).get("identity") == identity(study)):
        return out
    return create_run_dir(out.parent, "", out.name)


def run(study: JTransposeStudy, folder: Path) -> dict:
    """The study in `folder` (experiment/study.run_study); {"rows", "records" (the same), "summary", "title", "note"}."""
    header = {"study": "jtranspose", "identity": identity(study), **study.settings()}
    result = run_study(study, folder, header, to_dict(study.config))
    return {**result, "records": result["rows"], "note": study.note}
