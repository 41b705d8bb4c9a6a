#!/usr/bin/env bash
# The GPU checks, in one go, for a machine with a GPU (not part of CI: nothing here needs one).
#
#   scripts/gpu_check.sh                       # data in data/MNIST/raw, python from .venv or PATH
#   MNIST_DATA_DIR=/path EPOCHS=5 scripts/gpu_check.sh
#   TRAINER=cpu EPOCHS=1 scripts/gpu_check.sh  # a dry run of the script itself on a CPU
#   EXTRA="trainer.limit_train_batches=20" TRAINER=cpu EPOCHS=1 scripts/gpu_check.sh  # shorter
#
# Runs the reference experiment on the GPU in fp32 and bf16-mixed, each with the data on the host
# (batches copied every step) and with data.on_device=true (the dataset on the GPU, batches
# gathered there), then, with more than one GPU, a 1-epoch DDP smoke test (trainer=ddp) over all
# of them. Prints, per run: images/s and seconds of the last training epoch (the dashboard's
# perf/ scalars), wall time, test accuracy and how many test images it covered.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
EPOCHS=${EPOCHS:-5}
DATA=${MNIST_DATA_DIR:-data}
LOGS=${LOGS:-logs/gpu_check}
TRAINER=${TRAINER:-gpu}
read -ra EXTRA <<<"${EXTRA:-}"  # more overrides for every run, after the run's own
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"

if [ "$TRAINER" = gpu ]; then
  "$PYTHON" -c 'import sys, torch; torch.cuda.is_available() or sys.exit("no CUDA GPU visible")
print(f"torch {torch.__version__}, {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")'
fi
gpus=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")

run() {  # name, overrides...
  local name=$1; shift
  local start end
  rm -rf -- "${LOGS:?}/${name:?}"  # this invocation's run only: results.json below is its own
  start=$(date +%s%N)
  "$PYTHON" -m mnistlab.train "trainer=$TRAINER" "paths.data_dir=$DATA" data.sources=[local] \
    "paths.log_dir=$LOGS/$name" "trainer.max_epochs=$EPOCHS" "$@" "${EXTRA[@]}" \
    >"$LOGS/$name.log" 2>&1 \
    || { echo "$name: FAILED, see $LOGS/$name.log"; tail -5 "$LOGS/$name.log"; failed+=("$name"); return 0; }
  end=$(date +%s%N)
  "$PYTHON" - "$LOGS/$name" "$name" "$(( (end - start) / 1000000 ))" <<'EOF'
import json, pathlib, sys
folder, name, wall = pathlib.Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]) / 1000
(results,) = folder.glob("train/runs/*/results.json")
m = json.loads(results.read_text())["metrics"]
print(f"{name:28s} {m['perf/images_per_s']:>10,.0f} img/s  epoch {m['perf/epoch_time_s']:6.2f} s"
      f"  wall {wall:6.1f} s  test/acc {m['test/acc']:.4f} on {m['test/images']:.0f} images")
EOF
}

mkdir -p "$LOGS"
failed=()  # the other runs go on; the exit status says whether any failed
echo "run                           throughput   last epoch    whole run   result"
run fp32_host
run fp32_on_device data.on_device=true
run bf16_host trainer.precision=bf16-mixed
run bf16_on_device trainer.precision=bf16-mixed data.on_device=true
run bf16_on_device_b512 trainer.precision=bf16-mixed data.on_device=true data.batch_size=512 \
  float32_matmul_precision=high
if [ "$gpus" -gt 1 ]; then
  EPOCHS=1 run "ddp_${gpus}gpus" trainer=ddp "trainer.devices=$gpus" data.on_device=true
  ls -a "$LOGS/ddp_${gpus}gpus/train/runs/"*  # one run folder: .hydra, train.log, checkpoints
else
  echo "one GPU: DDP smoke test skipped (the CPU tests cover DDP with gloo)"
fi
if [ "${#failed[@]}" -gt 0 ]; then
  echo "failed: ${failed[*]}"
  exit 1
fi
