# Sourced by scripts/up and scripts/test: make .venv and install what is missing (once per change of the
# requirement files). Needs only Python 3.11+ on the machine.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
python=${PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      python=$candidate; break
    fi
  done
fi
[ -n "$python" ] || { echo "Protostar needs Python 3.11 or newer" >&2; exit 1; }
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.protostar-installed
want=$(cat "$@" constraints.txt pyproject.toml vendor/*/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "installing dependencies into .venv (first run takes a few minutes)..."
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet torch==2.13.0  # first, alone: the CPU build (see constraints.txt)
  for req in "$@"; do .venv/bin/python -m pip install --quiet -c constraints.txt -r "$req"; done
  # unstructured's PDF extra pulls torchvision, whose PyPI build cannot load beside the CPU torch and then
  # breaks `transformers` imports; nothing Protostar runs needs it (the `fast` PDF strategy does not).
  .venv/bin/python -m pip uninstall --quiet --yes torchvision 2>/dev/null || true
  .venv/bin/python -m pip install --quiet --no-deps -e .
  echo "$want" > "$stamp"
fi
