#!/usr/bin/env bash
# Puzzle (arXiv:2411.19146) on SmolLM2-135M-Instruct (issue 30): the parent's replies (data), the menu
# (space), blockwise local distillation (bld), the replace-one-block scores (score), the sub-blocks' costs
# through vLLM (costs: run it alone, nothing else on the machine), the MIP's architectures (mip) and each
# target's pick by measured held-out KL (pick), then GKD of each pick and of its uniform baseline on equal
# terms (gkd). One core: --threads 1,
# nice 10, one step at a time. Every step skips itself when done and resumes where it stopped, so
# rerunning this script continues:
#   nohup setsid bash bench/puzzle_smollm2.sh >> runs/puzzle-smollm2/logs/pipeline.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=runs/puzzle-smollm2
PARENT=models/SmolLM2-135M-Instruct
LOGS=$RUN/logs
PONDER=(nice -n 10 .venv/bin/ponder nas)
mkdir -p "$LOGS"

step() {  # step NAME ARGS...: one ponder nas command, its log appended to logs/NAME.log
    local name=$1
    shift
    echo "$(date -Is) $name: start"
    local t0=$SECONDS
    "${PONDER[@]}" "$name" "$@" >> "$LOGS/$name.log" 2>&1
    echo "$(date -Is) $name: done in $((SECONDS - t0)) s"
}

step data --run "$RUN" --parent "$PARENT" --open-samples 3 --arith-train 300 --arith-heldout 24 \
    --ops-train 200 --ops-heldout 16 --max-tokens 256 --temperature 0.7 --threads 1
step space --run "$RUN" --parent "$PARENT" --ffn-fractions 0.5,0.25 --calib-examples 256 --max-len 256 --threads 1
step bld --run "$RUN" --steps 500 --warmup 20 --batch-size 8 --lr 1e-3 --max-len 256 --ckpt-every 25 --threads 1
echo "$(date -Is) pipeline: data, space and bld are done; next: ponder nas score (see the issue-30 notes)"
step score --run "$RUN" --examples 82 --max-len 256 --batch-size 8 --accuracy-problems 0 --threads 1
step costs --run "$RUN" --batch-size 64
[ -f "$RUN/mip.json" ] || step mip --run "$RUN" --speedups 1.5,2.0 --alternatives 3  # a rerun would drop pick's KLs
step pick --run "$RUN" --threads 1
for child in x1.50 uniform-x1.50 x2.00 uniform-x2.00; do  # each pick beside its baseline, ~45 s/step on one core: ~1.9 h each
    step gkd --run "$RUN" --child "$child" --steps 150 --warmup 10 --batch-size 16 --max-len 256 --ckpt-every 10 --threads 1
done
echo "$(date -Is) pipeline: gkd is done; next: python bench/nas_pareto.py --run $RUN --data facts --gkd-steps 150 --gkd-warmup 10 --gkd-max-len 256 --serve-rounds 8"
