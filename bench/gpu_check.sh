#!/usr/bin/env bash
# The one device script: about 8 minutes on one GPU (the parts' limits add up to 470 s). Prints
# a markdown report and writes it (with every part's log) into the folder given as the first
# argument:  bash bench/gpu_check.sh <out folder>        (from the repository root)
# Parts, each under its own time limit, each failing soft (a part that fails says why and the
# rest still runs): the gpu-marked tests; the training step, plain loop vs CASSModule, at bf16
# and fp32 (+TF32), batch 64 and 256, 224 px, ResNet-50 + ViT-B/16 (pretrained=False), with the
# settings as shipped and at their best (compile), and at 384 px batch 16 (the in-memory rate
# of the paper's setting); paper_reference through the app for a bounded number of steps at
# bf16 and fp32, and at bf16 with data.augment_on=device (images/s, peak memory, data-wait
# share); CASS vs DINO-CNN and DINO-ViT with the same settings; the smoke study on the GPU with
# its overhead. It installs nothing and needs no network.
# PY picks the interpreter (default: .venv/bin/python, else python3); TIME_SCALE (default 1)
# multiplies every part's time limit.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash bench/gpu_check.sh <out folder>}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export WANDB_MODE=disabled PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
SCALE=${TIME_SCALE:-1}
REPORT="$OUT/gpu_check.md"
: > "$REPORT"
say() { printf '%s\n' "$@" | tee -a "$REPORT"; }

# part <name> <seconds> <command...>: run it under timeout, its output to <name>.log; the
# markdown it prints (lines starting with | or `) goes into the report; a failure says why.
part() {
  local name=$1 limit=$(( $2 * SCALE )) start=$SECONDS rc
  shift 2
  say "" "## $name" ""
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  grep -E '^(\||`|Training step|CASS /|  [A-Za-z-]+ +[0-9.]+ s/epoch|study time|[0-9]+ (passed|failed|skipped|errors?)\b)' \
    "$OUT/$name.log" | tee -a "$REPORT"
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    say "" "**$name: stopped at its time limit ($limit s)**; the last lines of $name.log:"
    tail -3 "$OUT/$name.log" | sed 's/^/    /' | tee -a "$REPORT"
  elif [ $rc -ne 0 ]; then
    say "" "**$name: failed (exit $rc)**; the last lines of $name.log:"
    tail -5 "$OUT/$name.log" | sed 's/^/    /' | tee -a "$REPORT"
  fi
  say "" "($name: $(( SECONDS - start )) s)"
}

say "# GPU check $(date -u +%Y-%m-%dT%H:%MZ)"
say ""
if command -v nvidia-smi > /dev/null; then
  say "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
else
  say "(no nvidia-smi on this machine)"
fi
say "$("$PY" -c 'import torch, lightning; print("torch", torch.__version__, "cuda", torch.version.cuda, "lightning", lightning.__version__)' 2>&1 | tail -1)"

part gpu_tests 40 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/gpu

part training_step 160 "$PY" bench/gpu_step.py --device cuda --steps 30 --warmup 8 \
  --configs bf16-mixed:64:shipped 32-true:64:shipped bf16-mixed:256:shipped \
            bf16-mixed:256:best bf16-mixed:16:shipped:384

part paper_reference_app 100 "$PY" bench/gpu_app.py --device cuda --steps 60 \
  --precisions bf16-mixed 32-true bf16-mixed:device --work "$OUT/app" --timeout 32

part cass_vs_dino 60 "$PY" bench/cass_vs_dino.py --device cuda --speed shipped \
  --precision bf16-mixed --images 600

# Every point on the GPU (study.device=gpu). One seed (half the fine-tuning points) to fit the
# time; the overhead line is the study's own.
part study_smoke_gpu 110 "$PY" -m cass_lightning.apps.study study=smoke study.device=gpu \
  "study.seeds=[0]" \
  "study.dir=$OUT/study" "paths.data_dir=$OUT/study_data"

say "" "Report: $REPORT"
