#!/usr/bin/env bash
# The chapter 5 comparison on large objects, end to end (benchmarks/RESULTS.md, "Mask heads on
# large objects"): the shared detector, then every head × seed, then the panoptic runs.
#
#   benchmarks/run_mask_heads_large.sh [RUNS]            # RUNS defaults to runs/large
#   SEEDS="0 1 2" HEADS="effseg refinemask maskrcnn pointrend" PARALLEL=2 benchmarks/run_mask_heads_large.sh
#   TAG=_neck OVERRIDES="--config.optim.frozen_parts=('backbone','head')" HEADS=effseg SEEDS=0 \
#     benchmarks/run_mask_heads_large.sh      # a variant: runs named <head><TAG>_s<seed>
#
# A run whose final evaluation exists is skipped, so the script can be restarted after an
# interruption (train.py resumes a run from its last checkpoint). With PARALLEL=2 two
# trainings share the machine (wall times are then not the idle ones). After every run the
# table is rewritten to RUNS/summary.md (benchmarks/mask_heads_large.py), and the run's
# numbers (metrics.jsonl, config.json, eval/metrics_<step>.json: a few hundred KB) are copied
# to ARCHIVE/<run>/ (default benchmarks/results/large, in the repository), so they outlive the
# work directory: `mask_heads_large.py --runs benchmarks/results/large` gives the table and
# the curves from them (the masks figure and --cost need the checkpoints).
#
# The convolutions run on oneDNN in float32 (MSVISION_CONV_IMPL=auto unless set; XLA where the
# onednn extra is missing): RefineMask++'s 1,500 steps take 24 min wall instead of 38 on two
# cores, the same quality within seed spread (benchmarks/RESULTS.md, "Curves and training time").
set -uo pipefail
export MSVISION_CONV_IMPL=${MSVISION_CONV_IMPL:-auto}
cd "$(dirname "$0")/.."
RUNS=${1:-runs/large}
SEEDS=${SEEDS:-0 1 2}
HEADS=${HEADS:-effseg refinemask maskrcnn pointrend}
PARALLEL=${PARALLEL:-1}
PANOPTIC=${PANOPTIC:-1}
TAG=${TAG:-}              # suffix of the head runs' names, for a variant given by OVERRIDES
OVERRIDES=${OVERRIDES:-}  # extra train.py flags of every head run (word-split on spaces)
ARCHIVE=${ARCHIVE:-benchmarks/results/large}
mkdir -p "$RUNS"

archive() {  # archive WORKDIR: its numbers into ARCHIVE/<name>/
  local dest="$ARCHIVE/$(basename "$1")"
  mkdir -p "$dest/eval"
  cp "$1/metrics.jsonl" "$1/config.json" "$dest/" 2>/dev/null
  cp "$1"/eval/metrics_*.json "$dest/eval/" 2>/dev/null
  return 0
}

finished() {  # the run's last evaluation is at its last step
  [ -f "$1/metrics.jsonl" ] && python - "$1" <<'EOF'
import json, os, sys
rows = [json.loads(l) for l in open(os.path.join(sys.argv[1], "metrics.jsonl"))]
cfg = json.load(open(os.path.join(sys.argv[1], "config.json")))
last = max((r["step"] for r in rows if any(k.startswith("eval/") for k in r)), default=-1)
sys.exit(0 if last >= cfg["train"]["num_steps"] else 1)
EOF
}

run() {  # run CONFIG WORKDIR [overrides...]
  local config=$1 workdir=$2; shift 2
  if [ -d "$workdir" ] && finished "$workdir"; then echo "done: $workdir"; return 0; fi
  echo "$(date -u +%FT%TZ) start $workdir"
  /usr/bin/time -v python train.py --config="$config" --workdir="$workdir" "$@" > "$workdir.log" 2>&1
  echo "$(date -u +%FT%TZ) end $workdir (exit $?)"
  archive "$workdir"
  python benchmarks/mask_heads_large.py --runs "$RUNS" --tag "$TAG" > "$RUNS/summary$TAG.md" 2>/dev/null
}

# The shared detector: DETECTOR if set, else a finished RUNS/detector, else the published
# weights in the repository (benchmarks/weights/large_detector, msvision.train.publish), else
# trained here (85 min on 2 cores).
DETECTOR=${DETECTOR:-}
if [ -z "$DETECTOR" ]; then
  if [ -d "$RUNS/detector" ] && finished "$RUNS/detector"; then DETECTOR=$RUNS/detector
  elif [ -d benchmarks/weights/large_detector/checkpoints ]; then DETECTOR=benchmarks/weights/large_detector
  else run configs/effseg/large_detector.py "$RUNS/detector"; DETECTOR=$RUNS/detector
  fi
fi
echo "detector: $DETECTOR"

jobs_running=0
for seed in $SEEDS; do
  for head in $HEADS; do
    # shellcheck disable=SC2086
    run "configs/effseg/large_$head.py" "$RUNS/${head}${TAG}_s$seed" --config.seed="$seed" \
      --config.train.init_from="$DETECTOR" $OVERRIDES &
    jobs_running=$((jobs_running + 1))
    if [ "$jobs_running" -ge "$PARALLEL" ]; then wait -n; jobs_running=$((jobs_running - 1)); fi
  done
done
wait
if [ "$PANOPTIC" = 1 ]; then
  jobs_running=0
  for head in $HEADS; do
    run "configs/panoptic/large_panoptic.py:$head" "$RUNS/panoptic_$head" --config.train.init_from="$DETECTOR" &
    jobs_running=$((jobs_running + 1))
    if [ "$jobs_running" -ge "$PARALLEL" ]; then wait -n; jobs_running=$((jobs_running - 1)); fi
  done
  wait
fi
python benchmarks/mask_heads_large.py --runs "$RUNS" --tag "$TAG" --curves "$RUNS/curves$TAG.png" --figure "$RUNS/masks$TAG.png"
