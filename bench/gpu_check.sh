#!/usr/bin/env bash
# GPU check, under 8 minutes on one GPU: the gpu-marked tests, then one epoch of the paper's
# setting (ResNet-50 + ViT-B/16, 384 px, batch 16) on the synthetic data in 32-true, 16-mixed
# and bf16-mixed with images/s and peak GPU memory, then CASS vs DINO time per epoch.
#   bash bench/gpu_check.sh            (from the repository root, after `make setup`)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export WANDB_MODE=disabled
OUT=${OUT:-$(mktemp -d)}
echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

echo "== gpu tests"
"$PY" -m pytest -q -m gpu tests/gpu

echo "== paper_reference, one epoch (600 synthetic images), batch 16, 384 px"
for precision in 32-true 16-mixed bf16-mixed; do
  run="$OUT/paper_$precision"
  "$PY" -m cass_lightning.apps.pretrain experiment=paper_reference model.pretrained=false \
    trainer=gpu trainer.precision=$precision trainer.max_epochs=1 data.num_workers=8 \
    paths.data_dir="$OUT/data" hydra.run.dir="$run" print_config=false \
    trainer.enable_progress_bar=false callbacks.export_backbones=null > "$run.log" 2>&1 \
    || { echo "$precision: FAILED (see $run.log)"; tail -5 "$run.log"; continue; }
  "$PY" - "$run" "$precision" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(f"{sys.argv[1]}/csv/metrics.csv")))
last = {k: v for r in rows for k, v in r.items() if v not in ("", None)}
mem = last.get("perf/gpu_mem_peak_gib", "n/a")
print(f"{sys.argv[2]:>10}: {float(last['perf/images_per_s']):7.1f} images/s, "
      f"epoch {float(last['perf/epoch_s']):6.1f} s, peak memory {mem} GiB")
PY
done

echo "== CASS vs DINO time per epoch"
if [ -f bench/cass_vs_dino.py ]; then
  "$PY" bench/cass_vs_dino.py --device cuda
else
  echo "bench/cass_vs_dino.py is not in this checkout yet (the DINO baseline comes with the evaluation work)"
fi
