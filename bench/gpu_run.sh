#!/usr/bin/env bash
# Every GPU number of bench/RESULTS.md in one run of at most 8 minutes on one H100/H200; small results under $OUT.
#
#   python bench/gpu_machine.py prepare         # first, HERE (PyPI reachable): .gpu/data/mnist and .whl/ (ignored)
#   OUT=$OUT bash bench/gpu_run.sh               # on the GPU machine: the device tool's run, carry=[".gpu", ".whl"]
#   python bench/gpu_machine.py rehearse --out /tmp/r   # anywhere: this script as that machine runs it, tiny sizes (CI)
#
# What the GPU machine is (see bench/gpu_machine.py): python3 with PyTorch 2.11 (CUDA), no network, no diffusers, and
# only the working tree plus the carried .gpu/ and .whl/ (never ../shared). So this script installs scorelab with
# `pip install --no-index --no-deps --no-build-isolation -e .` (PYTHONPATH if that fails), diffusers from the carried
# wheels into $WORK/site, and reads the MNIST test digits from .gpu/data/mnist. Checkpoints and run folders live in
# $WORK, never in $OUT: $OUT gets at most 8 small files (env.txt, run.log, train_log.jsonl, image_eval.json,
# image_eval.png, images.txt, ddp.txt), checked at the end. Each step has a time cap, and the script stops starting
# steps at its deadline (BUDGET_S, 480 s): a step that fails or runs over is recorded and the next one still runs.
#
#   setup       versions, the GPU, the install; stops at once if PyTorch sees no GPU (outside the rehearsal)
#   classifier  `scorelab classifier --config mnist --split test`: the judge of classifier-FID, trained on the first
#               9 000 test digits; its accuracy on the last 1 000, which the score model never sees either
#   train       `scorelab train --config mnist-vp split=test` for TRAIN_SECONDS (180) of wall clock, then SIGTERM
#               (fit checkpoints first); log.jsonl gets loss, images/s, grad_norm and classifier-FID of EMA samples
#   eval        bench/image_eval.py: FID curve against training minutes, minutes to recognisable digits, PC vs
#               Euler-Maruyama vs the ODE at equal NFE, bits/dim of held-out digits; one PNG
#   images      bench/images.py --no-compile: training images/s of our U-Net against diffusers' UNet2DModel of the same
#               size (fp32, bf16, bf16+channels_last), sampling images/s, the ODE likelihood against scipy
#   ddp         torchrun --nproc_per_node=1 of `scorelab train`, in a one-rank NCCL process group made beforehand
#
# DDP: `torchrun --nproc_per_node=1` alone creates no process group (scorelab joins one only when WORLD_SIZE > 1), so
# the ddp step makes a one-rank NCCL group itself before calling the CLI. What the GPU run checks of DDP: NCCL starts
# on this machine and all-reduces a CUDA tensor; torchrun's environment picks cuda:LOCAL_RANK; `scorelab train` inside
# an initialised group trains, checkpoints and passes its closing barrier and teardown on NCCL; DistributedDataParallel
# wraps the `mnist` U-Net in channels_last under bf16 autocast and its gradients are compared with the plain model's on
# the same batch (one rank: the all-reduce averages one copy, so only the wrapper's bucketing can differ). What only the
# CPU two-process test (tests/test_images.py::test_two_process_ddp_averages_gradients_and_resumes, gloo) checks:
# gradients averaged over two processes equal one process on the concatenated batch, each rank's own loss noise and
# dropout masks, and a resumed two-process run ending bit-identical. Nothing here runs NCCL with two ranks (one GPU).
#
# REHEARSAL=1: the same steps with tiny sizes (a tiny U-Net, a few steps, the shapes benchmark's --smoke), the same
# caps and half the budget (240 s), for bench/gpu_machine.py rehearse on the CPU; a failed step or $OUT problem fails it.
set -uo pipefail  # no -e: a failed step is recorded and the next one runs; the exit status says whether all passed

set -a  # every setting below is exported: the steps run in child shells under `timeout`
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
OUT=${OUT:?set OUT to the results folder}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
REHEARSAL=${REHEARSAL:-0}
PY=${PYTHON:-python3}
DATA=${DATA:-.gpu/data/mnist}
WORK=${WORK:-/tmp/scorelab-gpu}  # run folders and checkpoints; a rerun of some STEPS on a warm machine finds the others'
SITE=$WORK/site
STEPS=${STEPS:-classifier train eval images ddp}  # setup always runs
TRAIN_CONFIG=${TRAIN_CONFIG:-mnist-vp}
TQDM_DISABLE=1 PYTHONUNBUFFERED=1 MPLBACKEND=Agg
if [ "$REHEARSAL" = 1 ]; then
    BUDGET_S=${BUDGET_S:-240} TRAIN_SECONDS=${TRAIN_SECONDS:-4}
    CLASSIFIER_ARGS="--steps 20 --batch-size 32"
    TRAIN_ARGS=${TRAIN_ARGS:-"unet=tiny batch_size=8 log_every=2 fid_every=2 fid_samples=16 sample_steps=4"}
    EVAL_ARGS="--n 8 --nfe 4 --bpd-images 2 --ode-tolerance 1e-3 --ode-eps 0.1"
    BENCH_ARGS="--smoke"
    DDP_ARGS="unet=tiny batch_size=4 log_every=2 n_samples=2 sample_steps=2" DDP_STEPS=4 DDP_CHECK_BATCH=2
else
    BUDGET_S=${BUDGET_S:-480} TRAIN_SECONDS=${TRAIN_SECONDS:-180}
    CLASSIFIER_ARGS=""
    # estimates, not measurements: the mnist U-Net is 2.4 GFLOP per image forward; 256 samples x 250 PC steps
    # (500 NFE) take a few seconds, so a measurement every 1500 steps keeps them to a fraction of the wall clock
    TRAIN_ARGS=${TRAIN_ARGS:-"log_every=100 fid_every=1500 fid_samples=256 sample_steps=250"}
    EVAL_ARGS="--n 500 --nfe 200 --bpd-images 128"
    BENCH_ARGS="--no-compile --steps 10 --windows 3 --sample-images 500 --pc-steps 1000 --likelihood-images 64"
    DDP_ARGS="batch_size=64 log_every=10 n_samples=4 sample_steps=2" DDP_STEPS=20 DDP_CHECK_BATCH=32
fi
set +a
mkdir -p "$WORK"
DEADLINE=$((SECONDS + BUDGET_S))
FAILED=()
: >"$OUT/env.txt"

wants() { [[ " $STEPS " == *" $1 "* ]]; }

# step NAME CAP FUNCTION: run FUNCTION in a child shell under `timeout` (its whole process group), at most CAP seconds
# and never past the deadline; record the outcome in env.txt
step() {
    local name=$1 limit=$2 fn=$3 left=$((DEADLINE - SECONDS)) rc=0 start=$SECONDS
    wants "$name" || return 0
    ((limit > left)) && limit=$left
    if ((limit < 5)); then
        echo "== $name: not run, the ${BUDGET_S} s budget is spent" | tee -a "$OUT/env.txt"
        FAILED+=("$name")
        return 0
    fi
    echo "== $name (at most ${limit} s)"
    timeout -k 10 "$limit" bash -c "$(declare -f); $fn" || rc=$?
    local took=$((SECONDS - start)) verdict=ok
    [ $rc = 0 ] || verdict="FAILED (exit $rc$([ $rc = 124 ] && echo ", stopped at its ${limit} s cap"))"
    [ $rc = 0 ] || FAILED+=("$name")
    printf '%-10s %4d s  %s\n' "$name" "$took" "$verdict" | tee -a "$OUT/env.txt"
}

setup() {  # in the main shell: what it exports (PYTHONPATH) holds for every later step
    echo "== setup"
    {
        echo "mode: $([ "$REHEARSAL" = 1 ] && echo "REHEARSAL (CPU, tiny sizes)" || echo GPU); $(date -u +%FT%TZ); budget ${BUDGET_S} s"
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
        echo "python3: $(command -v "$PY") ($($PY -V 2>&1))"
    } | tee -a "$OUT/env.txt"
    if timeout 60 "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>&1 | tail -5; then
        echo "scorelab: pip install --no-index --no-deps --no-build-isolation -e ." | tee -a "$OUT/env.txt"
    else
        export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
        echo "scorelab: the editable install failed (above); PYTHONPATH=$ROOT instead" | tee -a "$OUT/env.txt"
    fi
    if compgen -G ".whl/*.whl" >/dev/null &&
        timeout 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl; then
        export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
        echo "wheels: $(cd .whl && echo *.whl) -> $SITE" | tee -a "$OUT/env.txt"
    else
        echo "wheels: none installed from .whl/ (bench/gpu_machine.py prepare makes them): no diffusers comparison" | tee -a "$OUT/env.txt"
    fi
    timeout 60 "$PY" - <<'EOF' 2>&1 | tee -a "$OUT/env.txt"
import importlib, os, torch, scorelab
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPU {torch.cuda.get_device_name() if torch.cuda.is_available() else None}")
print(f"scorelab from {os.path.dirname(scorelab.__file__)}")
try:
    d = importlib.import_module("diffusers")
    print(f"diffusers {d.__version__} from {os.path.dirname(d.__file__)}")
except ImportError as err:
    print(f"diffusers: not importable ({err})")
EOF
    [ -f "$DATA/t10k-images-idx3-ubyte.gz" ] || {
        echo "no MNIST test digits in $DATA: run bench/gpu_machine.py prepare here and carry .gpu" | tee -a "$OUT/env.txt"
        return 1
    }
    if [ "$REHEARSAL" != 1 ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
        echo "PyTorch sees no GPU: this is the GPU run (REHEARSAL=1 is the CPU one); stopping" | tee -a "$OUT/env.txt"
        return 2
    fi
}

classifier() {
    rm -rf "$WORK/classifier"
    "$PY" -m scorelab classifier --config mnist --data "$DATA" --split test --out "$WORK/classifier" $CLASSIFIER_ARGS
}

# time to stop the run: fit is running (its SIGTERM handler in place) once log.jsonl has a record; a judged run waits up
# to 40 s more for its first classifier-FID record, so that the evaluation has a point of the curve
stop_now() {  # stop_now LOG ELAPSED
    (($2 >= TRAIN_SECONDS)) && [ -s "$1" ] || return 1
    [ ! -f "$WORK/classifier/classifier.pt" ] || grep -qs classifier_fid "$1" || (($2 >= TRAIN_SECONDS + 40))
}

train() {
    local run=$WORK/run judge=()
    rm -rf "$run"
    [ -f "$WORK/classifier/classifier.pt" ] && judge=("classifier=$WORK/classifier/classifier.pt")
    "$PY" -m scorelab train --config "$TRAIN_CONFIG" --data "$DATA" --out "$run" --steps 1000000 split=test \
        sample_every=0 progress=false $TRAIN_ARGS "${judge[@]}" &
    local pid=$! start=$SECONDS rc=0
    while kill -0 $pid 2>/dev/null; do
        if stop_now "$run/log.jsonl" $((SECONDS - start)); then
            echo "SIGTERM after $((SECONDS - start)) s: fit checkpoints, then stops"
            kill -TERM $pid
            break
        fi
        sleep 1
    done
    wait $pid || rc=$?
    [ -f "$run/log.jsonl" ] && cp "$run/log.jsonl" "$OUT/train_log.jsonl"
    [ -f "$run/checkpoint.pt" ] || { echo "no checkpoint in $run"; return 1; }
    [ $rc = 0 ] || [ $rc = 143 ]  # 143: ended by the SIGTERM above, which fit re-raises after its checkpoint
}

evaluate() {
    [ -f "$WORK/run/checkpoint.pt" ] && [ -f "$WORK/classifier/classifier.pt" ] || { echo "needs the classifier and train steps"; return 1; }
    "$PY" bench/image_eval.py --run "$WORK/run" --classifier "$WORK/classifier/classifier.pt" --data "$DATA" --out "$OUT" $EVAL_ARGS
}

images() {
    "$PY" bench/images.py $BENCH_ARGS 2>&1 | tee "$OUT/images.txt"
}

ddp() {
    rm -rf "$WORK/ddp"
    cat >"$WORK/ddp_driver.py" <<'EOF'
"""torchrun worker: a one-rank process group (NCCL on CUDA, gloo on the CPU), a DDP gradient check, the CLI, its checkpoint."""
import os, sys
import torch
import torch.distributed as dist
from dataclasses import replace
from scorelab import cli, losses
from scorelab.nets import UNET_PRESETS, UNet
from scorelab.sde import VPSDE, condition_on_std
from scorelab.train import load_checkpoint

cuda = torch.cuda.is_available()
device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
if cuda:
    torch.cuda.set_device(device)
dist.init_process_group("nccl" if cuda else "gloo")
x = torch.ones(1, device=device)
dist.all_reduce(x)
print(f"process group: {dist.get_backend()}, world {dist.get_world_size()}, rank {dist.get_rank()}, all_reduce {x.item()}")

# the U-Net of the run in DDP as fit wraps it (bf16 autocast and channels_last on CUDA), one step's gradients
# against the plain model's on the same batch and noise; twice plain shows the kernels' own run-to-run spread
preset = os.environ.get("DDP_CHECK_UNET", "mnist")
torch.manual_seed(0)
net = UNet(replace(UNET_PRESETS[preset], channels=1)).to(device)
layout = torch.channels_last if cuda else torch.contiguous_format
net = net.to(memory_format=layout)
batch = torch.randn(int(os.environ["DDP_CHECK_BATCH"]), 1, 28, 28, device=device).contiguous(memory_format=layout)
sde = VPSDE()

def grads(model):
    net.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
        loss = losses.sde_dsm(condition_on_std(model, sde), batch, sde, generator=torch.Generator(device).manual_seed(1))
    loss.backward()
    return torch.cat([p.grad.float().flatten() for p in net.parameters()])

plain, again = grads(net), grads(net)
wrapped = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if cuda else None)
ddp = grads(wrapped)
scale = plain.abs().max().item()
print(f"DDP check ({preset} U-Net, {'bf16 + channels_last, ' if cuda else ''}{len(batch)} images): max |grad difference| / max |grad|:"
      f" DDP vs plain {(ddp - plain).abs().max().item() / scale:.3g}, plain vs plain {(again - plain).abs().max().item() / scale:.3g}")
if cli.main(sys.argv[1:]) != 0:
    sys.exit(1)
state = load_checkpoint(os.path.join(os.environ["WORK"], "ddp", "checkpoint.pt"))
print(f"checkpoint: world_size {state['world_size']}, {len(state['history'])} steps")
sys.exit(not (state["world_size"] == 1 and len(state["history"]) == int(os.environ["DDP_STEPS"])))
EOF
    DDP_CHECK_UNET=$([ "$REHEARSAL" = 1 ] && echo tiny || echo mnist) "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 \
        "$WORK/ddp_driver.py" train --config "$TRAIN_CONFIG" --data "$DATA" --out "$WORK/ddp" --steps "$DDP_STEPS" split=test \
        sample_every=0 progress=false $DDP_ARGS 2>&1 | tee "$OUT/ddp.txt"
}

main() {
    local start=$SECONDS rc=0
    setup || rc=$?
    printf '%-10s %4d s  %s\n' setup $((SECONDS - start)) "$([ $rc = 0 ] && echo ok || echo "FAILED (exit $rc)")" | tee -a "$OUT/env.txt"
    if [ $rc != 0 ]; then
        echo "setup failed: nothing else is run" | tee -a "$OUT/env.txt"
        return 1
    fi
    step classifier 90 classifier
    step train $((TRAIN_SECONDS + 60)) train
    step eval 120 evaluate
    step images 150 images
    step ddp 90 ddp

    echo "total      ${SECONDS} s of the ${BUDGET_S} s budget" | tee -a "$OUT/env.txt"
    local problems
    problems=$(find "$OUT" -mindepth 1 ! -type d | awk 'END {if (NR > 8) print NR " files under $OUT: at most 8 come back"}'
        find "$OUT" -type f -size +16M -printf '%P: over 16 MiB\n'
        find "$OUT" -mindepth 4 -printf '%P: more than 2 folders down\n'
        find "$OUT" -mindepth 1 ! -type d ! -type f -printf '%P: not a plain file\n'
        find "$OUT" -mindepth 1 -printf '%P\n' | grep -v -E '^[A-Za-z0-9._/-]+$' | sed 's/$/: a name with other characters/'
        find "$OUT" -type f \( -name '*.pt' -o -name '*.npz' \) -printf '%P: a checkpoint or archive\n')
    if [ -n "$problems" ]; then
        echo "\$OUT problems:" && echo "$problems" | tee -a "$OUT/env.txt"
        FAILED+=(out)
    fi
    if ((SECONDS > BUDGET_S)); then
        echo "over the ${BUDGET_S} s budget" | tee -a "$OUT/env.txt"
        FAILED+=(time)
    fi
    echo "results: $(cd "$OUT" && ls | tr '\n' ' ')(run folders in $WORK)"
    [ ${#FAILED[@]} = 0 ] && echo "all steps passed" || { echo "failed: ${FAILED[*]}" | tee -a "$OUT/env.txt"; return 1; }
}

main 2>&1 | tee "$OUT/run.log"
