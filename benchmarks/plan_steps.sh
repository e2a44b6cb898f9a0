# The steps of a GPU plan that fits one device call (sourced by benchmarks/kernel_plan.sh, forward_profile.sh and
# decode_plan.sh). The sourcing script sets DEADLINE (seconds after its start, a bash $SECONDS count) and LOG (a file
# every step's output is appended to) before its first step; DRY=1 prints each step's command instead of running it.

ATTENTION_MODES="split atomic reduce tma vsplit maps poly lazy"  # benchmarks/attention.py's MODES

# refuse MESSAGE: a setting that would fail minutes into the call, named before any step (exit 2)
refuse() {
    echo "$(basename "$0"): $1" >&2
    exit 2
}

# check_attention_modes VARIABLE MODE...: refuses an empty list or a mode that benchmarks/attention.py lacks
check_attention_modes() {
    local name=$1 mode
    shift
    (($#)) || refuse "$name is empty; name modes of benchmarks/attention.py, e.g. $name=\"split lazy\""
    for mode in "$@"; do
        [[ " $ATTENTION_MODES " == *" $mode "* ]] || refuse "$name: unknown mode '$mode'; use one of: $ATTENTION_MODES"
    done
}

PLANNED=0  # DRY=1: the seconds the steps so far may take, each at its full limit (the plan's worst case)

# step NAME SECONDS COMMAND...: the command under a time limit (SECONDS, or less if the deadline comes first),
# its output to the screen and the log (DRY=1: print the command instead)
step() {
    local name=$1 limit=$2
    shift 2
    if [[ ${DRY:-0} == 1 ]]; then
        printf 'PLAN command (%s s):' "$limit"
        printf ' %q' "$@"
        echo
        PLANNED=$((PLANNED + limit))
        return 0
    fi
    ((DEADLINE - SECONDS < limit)) && limit=$((DEADLINE - SECONDS))
    if ((limit < 10)); then
        echo "PLAN $name skipped: the deadline (+$DEADLINE s) is near" | tee -a "$LOG"
        return 124
    fi
    echo "PLAN $name (at most $limit s) starts at +${SECONDS} s" | tee -a "$LOG"
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=$?
    echo "PLAN $name ends at +${SECONDS} s, rc $rc$( ((rc == 124)) && echo ': out of time')" | tee -a "$LOG"
    return "$rc"
}

# time_left: the seconds until the deadline (DRY=1: if every step so far took its full limit)
time_left() {
    if [[ ${DRY:-0} == 1 ]]; then
        echo $((DEADLINE - PLANNED))
    else
        echo $((DEADLINE - SECONDS))
    fi
}
