#!/usr/bin/env bash
# Every GPU number of bench/RESULTS.md in one run of about 8 minutes on one H100/H200; results under $OUT.
#
#   OUT=gpu-out DATA=../shared/data/mnist bash bench/gpu_run.sh          # on the GPU machine
#   SMOKE=1 OUT=/tmp/gpu-smoke bash bench/gpu_run.sh                     # anywhere: tiny sizes, proves the steps run
#
# 1. the judge: `scorelab classifier` on the MNIST test split (the only split in ../shared/data/mnist), last 1000 held out
# 2. `scorelab train --config mnist-vp` for TRAIN_SECONDS of wall clock, logging classifier-FID of EMA samples
# 3. bench/image_eval.py: FID curve, minutes to recognisable digits, PC vs Euler-Maruyama vs ODE at equal NFE, bits/dim
# 4. bench/images.py: training and sampling throughput against diffusers, the GPU likelihood against the scipy round trip
# 5. torchrun --nproc_per_node=1: a few steps through the DistributedDataParallel (NCCL) path
# Install first without replacing the machine's CUDA torch: pip install --no-deps -e . (done below), and diffusers from
# wheels carried in .whl/ (the machine has no internet).
set -euo pipefail
OUT=${OUT:?set OUT to the results folder}
DATA=${DATA:-../shared/data/mnist}
SMOKE=${SMOKE:-0}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if [ "$SMOKE" = 1 ]; then
    DATASET=(--config shapes) CONFIG=shapes-vp TRAIN_SECONDS=10
    RUN_ARGS=(unet=tiny n_images=200 holdout=64 --batch-size 8 fid_every=4 fid_samples=16 sample_steps=4 sample_every=0 log_every=2)
    EVAL_ARGS=(--n 8 --nfe 4 --bpd-images 2) BENCH_ARGS=(--smoke) DDP_ARGS=(unet=tiny n_images=32 holdout=8 --batch-size 4)
    CLASSIFIER_ARGS=(--steps 20)
else
    DATASET=(--config mnist --data "$DATA" --split test) CONFIG=mnist-vp TRAIN_SECONDS=${TRAIN_SECONDS:-240}
    RUN_ARGS=(--data "$DATA" split=test fid_every=500 fid_samples=500 sample_steps=250 sample_every=2000 log_every=100)
    EVAL_ARGS=(--data "$DATA" --n 500 --nfe 200 --bpd-images 128)
    BENCH_ARGS=(--steps 10 --windows 3 --sample-images 1000 --pc-steps 1000 --likelihood-images 64)
    DDP_ARGS=(--data "$DATA" split=test --batch-size 64) CLASSIFIER_ARGS=()
    $PY -m pip install -q --no-deps -e .
    if [ -d .whl ]; then
        $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" || true
fi
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee "$OUT/versions.txt"

echo "== 1. classifier"
$PY -m scorelab classifier "${DATASET[@]}" --out "$OUT/classifier" "${CLASSIFIER_ARGS[@]}" | tee "$OUT/classifier.txt"

echo "== 2. train for $TRAIN_SECONDS s (SIGTERM then checkpoints and stops the run)"
timeout -s TERM "$TRAIN_SECONDS" $PY -m scorelab train --config "$CONFIG" --out "$OUT/run" --steps 1000000 \
    "${RUN_ARGS[@]}" classifier="$OUT/classifier/classifier.pt" progress=false || [ $? = 124 ]

echo "== 3. evaluation"
$PY bench/image_eval.py --run "$OUT/run" --classifier "$OUT/classifier/classifier.pt" --out "$OUT" "${EVAL_ARGS[@]}" \
    > "$OUT/image_eval.txt"

echo "== 4. throughput against diffusers"
$PY bench/images.py "${BENCH_ARGS[@]}" | tee "$OUT/images.txt"

echo "== 5. DDP through torchrun"
$PY -m torch.distributed.run --standalone --nproc_per_node=1 -m scorelab train --config "$CONFIG" --out "$OUT/ddp" \
    --steps 20 "${DDP_ARGS[@]}" sample_every=0 n_samples=4 sample_steps=2 progress=false | tail -3 | tee "$OUT/ddp.txt"
echo "done: $OUT"
