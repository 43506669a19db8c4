#!/usr/bin/env bash
# bioprop's GPU run (issue 14): set up without network, then every measurement into one folder.
#
#   benchmarks/gpu.sh --out DIR [--data-dir DIR] [--quick] [--budget-s 480]
#
# On the GPU machine (no network; python3 with a CUDA build of JAX, optax, typer, rich, pyyaml,
# numpy, matplotlib and pytest already there): the project runs from this checkout through
# PYTHONPATH (nothing is installed); pure-Python wheels missing there can be brought along in
# .gpu/wheels/ and are unpacked into /tmp. MNIST: --data-dir, else $BIOPROP_DATA_DIR, else
# .gpu/mnist in this checkout. To prepare a device run, in the repository root:
#   mkdir -p .gpu && cp -r /work/shared/datasets/mnist .gpu/mnist && echo /.gpu/ >> .git/info/exclude
# then run `bash benchmarks/gpu.sh --out $OUT` there with `.gpu` carried (about 8 minutes plus
# the machine's start; --budget-s caps the steps). On a CPU: benchmarks/gpu.sh --quick --out /tmp/gpu
# (a few minutes). The steps and the JSON they write: benchmarks/gpu.py.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

if compgen -G "$ROOT/.gpu/wheels/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/bioprop-site "$ROOT"/.gpu/wheels/*.whl
  export PYTHONPATH="/tmp/bioprop-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
if [[ -z "${BIOPROP_DATA_DIR:-}" && -d "$ROOT/.gpu/mnist" ]]; then
  export BIOPROP_DATA_DIR="$ROOT/.gpu/mnist"
fi

"$PYTHON" -c "import jax, jaxlib, optax, typer, rich, yaml, numpy, matplotlib, pytest" || {
  echo "error: $PYTHON lacks one of jax, jaxlib, optax, typer, rich, pyyaml, numpy, matplotlib, pytest (bring wheels in .gpu/wheels/)" >&2
  exit 1
}
"$PYTHON" -c "import jax; print('devices:', jax.devices())"
exec "$PYTHON" "$ROOT/benchmarks/gpu.py" "$@"
