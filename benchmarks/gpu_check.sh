#!/usr/bin/env bash
# One prepared check for one GPU machine without internet (under 8 minutes on one H100/H200):
#   1. the demo end to end on the GPU (reduced: 8 clips, 20 steps), asserting from the logs that training,
#      merging and both predictions ran on CUDA;
#   2. the stock InternVLProcessor path (torchvision installed) against vidtune's image-only processor;
#   3. benchmarks/train_gpu.py: the workflow's training step at the InternVL3-8B shape (LoRA bf16, QLoRA)
#      and prediction; its last line is one JSON object;
#   4. benchmarks/train_throughput.py at the InternVL3-8B shape with flash-attention (sdpa where the flash-attn
#      package is missing; the log says which): padded baseline, length grouping and packing, one JSON line.
#
#   bash benchmarks/gpu_check.sh                      # with a Python that has vidtune's requirements
#   WHEELS=/path/to/wheels bash benchmarks/gpu_check.sh   # first installs them (and torchvision) offline
#
# PYTHON picks the interpreter (default: .venv/bin/python, else python3); OUT where results go (default
# gpu_check/). Without a GPU it runs everything it can: the demo on the CPU (asserting the logs say cpu),
# step 2 (skipped without torchvision) and the benchmark's --small CPU smoke check.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(mkdir -p "${OUT:-gpu_check}" && cd "${OUT:-gpu_check}" && pwd)"
PYTHON="${PYTHON:-$([ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv/bin/python" || echo python3)}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
started=$SECONDS
step() { echo "== [$((SECONDS - started)) s] $*"; }

if [ -n "${WHEELS:-}" ]; then
    step "installing from $WHEELS (offline) into $OUT/venv"
    "$PYTHON" -m venv "$OUT/venv"
    PYTHON="$OUT/venv/bin/python"
    "$PYTHON" -m pip install -q --no-index --find-links "$WHEELS" -r "$REPO/requirements.txt" torchvision
    "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation -e "$REPO"
fi
SNAKEMAKE="$(dirname "$PYTHON")/snakemake"
GPU=$("$PYTHON" -c "import torch; print(int(torch.cuda.is_available()))")
DEVICE=$([ "$GPU" = 1 ] && echo cuda || echo cpu)
step "device: $DEVICE"

# --- 1. The demo end to end --------------------------------------------------------------------------------
WORK="$OUT/demo"
rm -rf "$WORK" && mkdir -p "$WORK/config"
"$PYTHON" - "$REPO/config/config.yaml" "$WORK/config/config.yaml" "$GPU" <<'EOF'
import sys, yaml
config = yaml.safe_load(open(sys.argv[1]))
gpus = int(sys.argv[3])
config["demo"] = {"num_videos": 8, "seconds": 1, "size": 64}
config["runs"]["demo"]["training"].update({"epochs": 1, "max_steps": 20, "save_steps": 10, "batch_size": 2,
                                           "gpus": gpus})
config["runs"]["demo"]["evaluation"].update({"max_new_tokens": 8, "batch_size": 1, "gpus": gpus, "shards": 2})
yaml.safe_dump(config, open(sys.argv[2], "w"), sort_keys=False)
EOF
step "demo: snakemake train_all"
"$SNAKEMAKE" -s "$REPO/Snakefile" --directory "$WORK" --resources gpu=1 --cores 4 train_all \
    > "$OUT/demo_snakemake.log" 2>&1 || { tail -40 "$OUT/demo_snakemake.log"; exit 1; }
LOGS="$WORK/results/logs"
check_log() {  # check_log WHAT PATTERN FILES...: every job's log says it ran there (an empty shard loads no model)
    local what=$1 pattern=$2; shift 2
    for file in "$@"; do
        grep -q "$pattern" "$file" || grep -q "shard [0-9]* of [0-9]*: 0 of" "$file" \
            || { echo "FAIL: $what: no '$pattern' in $file"; exit 1; }
    done
    echo "ok: $what ran on $DEVICE ($# log(s))"
}
check_log train "training on $DEVICE" "$LOGS"/train/demo.log
check_log merge "merging on $DEVICE" "$LOGS"/merge/demo.log
check_log "base predictions" "predicting on $DEVICE" "$LOGS"/predict/base/*/*/*.log
check_log "finetuned predictions" "predicting on $DEVICE" "$LOGS"/predict/finetuned/demo/*.log
find "$LOGS/predict" -name "*.log" -exec grep -h "samples/s" {} + | tail -4

# --- 2. The stock InternVLProcessor (torchvision) ----------------------------------------------------------
step "stock InternVLProcessor"
if "$PYTHON" -c "import torchvision" 2>/dev/null; then
    "$PYTHON" -m pytest -q -p no:cacheprovider "$REPO/tests/test_stock_processor.py"
else
    echo "skipped: torchvision cannot be imported here"
fi

# --- 3. The training and prediction benchmark --------------------------------------------------------------
step "benchmarks/train_gpu.py"
if [ "$GPU" = 1 ]; then
    "$PYTHON" "$REPO/benchmarks/train_gpu.py" --workdir "$OUT" | tee "$OUT/train_gpu.log"
else
    "$PYTHON" "$REPO/benchmarks/train_gpu.py" --small --frames 2 --steps 2 --batch-size 1 --predict-samples 4 \
        --workdir "$OUT" | tee "$OUT/train_gpu.log"
fi
tail -1 "$OUT/train_gpu.log" > "$OUT/train_gpu.json"

# --- 4. Throughput of padded, length-grouped and packed batches --------------------------------------------
if [ "$GPU" = 1 ]; then
    ATTENTION=$("$PYTHON" -c "import flash_attn" 2>/dev/null && echo flash_attention_2 || echo sdpa)
    step "benchmarks/train_throughput.py (attention: $ATTENTION)"
    "$PYTHON" "$REPO/benchmarks/train_throughput.py" --attention "$ATTENTION" --workdir "$OUT" \
        | tee "$OUT/train_throughput.log"
    tail -1 "$OUT/train_throughput.log" > "$OUT/train_throughput.json"
else
    step "benchmarks/train_throughput.py: skipped without a GPU (run it by itself on a CPU: about an hour)"
fi
step "done: $OUT/train_gpu.json $([ "$GPU" = 1 ] && echo "$OUT/train_throughput.json")"
