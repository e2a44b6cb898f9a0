#!/usr/bin/env bash
# Run reproduction runs of several experiments on a multi-GPU machine, one lane per GPU, within one
# wall-clock budget, then pack each lane's records.
#
#   scripts/gpu_lanes.sh SECONDS OUT_DIR LANE [LANE ...]
#
# LANE i runs on GPU i (CUDA_VISIBLE_DEVICES=i), one run after another. It is a space-separated list of
# EXPERIMENT:RUN,RUN,... items, e.g. "compare:transformer-42m-s1,diff-42m-s1 lr_sweep:diff_v2-23m-lr0.008-s1";
# a RUN may be a shell pattern of run names ("mqar:*-n64-p4-*"), which the reproduce command expands.
# Each item goes through scripts/gpu_reproduce.sh with what is left of the budget (which ends within it: it
# stops its runs with SIGINT 45 s before, so they save checkpoints; an item is not started with less than
# 60 s left), writing its log and
# records to OUT_DIR/gI/EXPERIMENT.log and OUT_DIR/gI/EXPERIMENT-records.tgz. Finished runs are skipped and
# a cut-off run resumes from its last checkpoint when the same command runs again on the same machine, so
# repeating the command continues the lanes. Runs of one experiment may sit in several lanes (each run has
# its own folder).
set -u
seconds=$1 out=$2
shift 2
deadline=$((SECONDS + seconds))
here=$(cd "$(dirname "$0")" && pwd)
lane=0
for spec in "$@"; do
    (
        set -f  # a run pattern in a LANE reaches the reproduce command as written, not as file names
        mkdir -p "$out/g$lane"
        export CUDA_VISIBLE_DEVICES=$lane
        for item in $spec; do
            experiment=${item%%:*}
            left=$((deadline - SECONDS))
            if [ "$left" -lt 60 ]; then
                echo "lane $lane: budget spent before $item" >>"$out/g$lane/lanes.log"
                break
            fi
            runs=()
            IFS=, read -ra names <<<"${item#*:}"
            for name in "${names[@]}"; do runs+=(--run "$name"); done
            echo "lane $lane: $item with $left s left" >>"$out/g$lane/lanes.log"
            bash "$here/gpu_reproduce.sh" "$experiment" "$left" "$out/g$lane" "${runs[@]}" >>"$out/g$lane/lanes.log"
        done
    ) &
    lane=$((lane + 1))
done
wait
cat "$out"/g*/lanes.log
