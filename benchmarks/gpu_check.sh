#!/usr/bin/env bash
# The prepared GPU check (issue 23, part 5): one script, <= 8 min end to end on a fresh GPU machine (a bare copy of
# this repository), install included.
#
#   How the lead runs it with the device tool:   run  command="bash benchmarks/gpu_check.sh"  timeout_s=560
#   The summary ends the reply's output_tail; the JSON comes back as $OUT/gpu_check.json (files_at). Record the
#   numbers in benchmarks/README.md ("GPU check").
#
# What it does: installs the project into .venv (as `make install`: pip with constraints.txt, editable) unless a
# working .venv is already there, then runs benchmarks/gpu_check.py: a small project built from the shipped demo
# weights (weights/demo, no training), the explain stage with the Dask runner (one worker per GPU) and with threads
# (rows compared), the float16 (AMP) tolerance of each scorer, raw forward vs scorer throughput, explanations per
# second and each method's net overhead. JSON: $OUT/gpu_check.json when OUT is set, else
# benchmarks/results/gpu_check.json. Without CUDA it runs in CPU-small mode and says so (output and JSON "mode");
# tests/test_gpu_check.py runs that mode in CI.
#
# Install: when the machine's python3 already has a CUDA build of torch (GPU images usually do), the venv is made
# with --system-site-packages and torch / torchvision / triton / nvidia-* are not reinstalled (no ~3 GB download);
# everything else is pinned by constraints.txt. GPU_CHECK_SYSTEM_TORCH=0 installs the pinned torch too.
# WHEELHOUSE=DIR installs from DIR only (pip --no-index --find-links DIR), for a machine that cannot reach the index.
# Arguments are passed to gpu_check.py (--small: CPU-small sizes even on a GPU; --out PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 YOLO_OFFLINE=1 YOLO_AUTOINSTALL=0 DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
START=$(date +%s)
log() { echo "gpu_check.sh [$(($(date +%s) - START)) s]: $*"; }

PY=.venv/bin/python
works() { [ -x "$PY" ] && "$PY" -c "import flows, tasks.explain, prefect_dask, distributed" 2>/dev/null; }

if works; then
    log "using the existing .venv"
else
    BASE=${PYTHON:-python3}
    mkdir -p .work
    CONSTRAINTS=.work/gpu_check_constraints.txt
    if [ "${GPU_CHECK_SYSTEM_TORCH:-1}" != 0 ] && \
            "$BASE" -c "import sys, torch, torchvision; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
        log "the machine's torch $("$BASE" -c 'import torch; print(torch.__version__)') has CUDA: a venv over the" \
            "system site-packages, torch kept"
        "$BASE" -m venv --system-site-packages .venv
        grep -v -E '^(torch|torchvision|triton|nvidia-[A-Za-z0-9_.-]+)==' constraints.txt > "$CONSTRAINTS"
    else
        log "installing the pinned stack (torch included) into .venv"
        "$BASE" -m venv .venv
        cp constraints.txt "$CONSTRAINTS"
    fi
    PIP=(.venv/bin/python -m pip install --disable-pip-version-check --quiet --timeout 20 --retries 1
         -c "$CONSTRAINTS" --config-settings editable_mode=compat)
    if [ -n "${WHEELHOUSE:-}" ]; then
        PIP+=(--no-index --find-links "$WHEELHOUSE")
    fi
    if ! "${PIP[@]}" -e . > .work/gpu_check_pip.log 2>&1; then
        grep -v "is ignored: it is neither" .work/gpu_check_pip.log | tail -20
        log "pip could not install the project (is the package index reachable? else set WHEELHOUSE=DIR to a folder" \
            "of wheels, see the top of this script)"
        exit 2
    fi
    works || { log "installed, but .venv cannot import the project (see .work/gpu_check_pip.log)"; exit 2; }
    log "installed"
fi
"$PY" -c "import torch; print('gpu_check.sh: torch', torch.__version__, 'CUDA', torch.cuda.is_available(), \
[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])"
"$PY" benchmarks/gpu_check.py "$@"
log "done"
