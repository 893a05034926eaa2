#!/usr/bin/env bash
# `make test`: everything from nothing, on both TransformerLens majors, with a time breakdown.
#   setup     .venv (TransformerLens 3.x, editable, dev extras); .venv-tl4 (TransformerLens 4.x
#             from a built wheel, as a user installs it) builds in the background meanwhile
#   4.x-setup what is left of that build when the 3.x parts are done (usually nothing)
#   lint      ruff
#   main      the suite on 3.x (hooked default), two workers, notebooks and browser excepted
#   notebooks every notebook executed once (quick settings), on 3.x
#   browser   the notebook card drawn in headless Chromium
#   4.x       the suite on 4.x (bridge default) from the wheel, two workers
# Every test has a finite timeout (TEST_TIMEOUT seconds), so a hang fails one test, not the run.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# two workers on two cores: one intra-op thread each (more only makes them fight)
export ICL_MECH_THREADS="${ICL_MECH_THREADS:-1}"
WORKERS="${TEST_WORKERS:-2}"
TIMEOUT="${TEST_TIMEOUT:-900}"
MAKE="${MAKE:-make}"
declare -a PARTS=()
start_all=$(date +%s)

timed() {  # timed NAME COMMAND...: run it, record its wall time
    local name=$1 began status=0
    shift
    began=$(date +%s)
    "$@" || status=$?
    PARTS+=("$name $(($(date +%s) - began))")
    return $status
}

report() {
    [ -z "$tl4_setup_pid" ] || kill "$tl4_setup_pid" 2>/dev/null || true  # a failure left it running
    echo
    echo "time by part (wall seconds):"
    for part in "${PARTS[@]}"; do printf '  %-10s %5s\n' ${part}; done
    printf '  %-10s %5s\n' total $(($(date +%s) - start_all))
}
tl4_setup_pid=""
trap report EXIT

start_tl4_setup() {  # the 4.x environment builds in the background while 3.x sets up and tests
    scripts/tl4-env > >(sed 's/^/[4.x setup] /') 2>&1 &
    tl4_setup_pid=$!
}

wait_tl4_setup() {
    wait "$tl4_setup_pid"
}

PYTEST=(-q -p no:cacheprovider --timeout="$TIMEOUT" --durations=25)
PARALLEL=(-n "$WORKERS" --dist loadfile)
start_tl4_setup
timed setup "$MAKE" --no-print-directory setup
timed lint "$MAKE" --no-print-directory lint
timed main .venv/bin/python -m pytest "${PYTEST[@]}" "${PARALLEL[@]}" \
    --ignore=tests/test_notebooks.py --ignore=tests/test_browser.py
# notebooks spread over the workers, an idle one taking the next (loadfile would keep them on one)
timed notebooks .venv/bin/python -m pytest "${PYTEST[@]}" -n "$WORKERS" --dist worksteal tests/test_notebooks.py
timed browser .venv/bin/python -m pytest "${PYTEST[@]}" tests/test_browser.py
timed "4.x-setup" wait_tl4_setup
timed 4.x scripts/tl4-test "${PYTEST[@]}" "${PARALLEL[@]}"
