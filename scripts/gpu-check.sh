#!/usr/bin/env bash
# One-shot GPU check: on a machine with a GPU and neither network nor Rust toolchain, what dmnn
# computes and how fast, in one folder of CSV files and a log. Built for CUDA (the bundle of
# `cargo xtask gpu-bundle`), and run as a dry run on WGPU (Mesa's lavapipe in CI) with the same
# steps and the same CSV columns.
#
#   ./gpu-check.sh [--backend cuda|wgpu] [--quick] [--out DIR] [--device N] [--devices LIST]
#
#   --backend  cuda (default) or wgpu
#   --quick    small models and sizes (a software Vulkan or a slow card); same steps and columns
#   --out      output folder (default: gpu-check-<backend>-<date>)
#   --device   GPU index (default: the backend's default device)
#   --devices  the devices of the scaling step, e.g. 0,1,2,3 (CUDA default: every GPU listed
#              by nvidia-smi when there are two or more; `cpu,default` on lavapipe)
#
# The dmnn binary: $DMNN_BIN, else `dmnn` next to this script, else `dmnn` on the PATH.
# Steps (each one's output in log.txt; the script stops at the first that fails):
#   1. the device (nvidia-smi where present; dmnn's backend line)
#   2. sparse vs masked on the GPU (checked before any timing, 1e-4) and kernel counts: dmnn_small
#   3. inference: dmnn50 at 224 px (sparse, masked, full) and resnet50, batch 1, 16, 64, 256,
#      gate rates 0.25-1.0 -> bench-<backend>.csv
#   4. training-step throughput at batch 64 (dmnn50 with the full objective, resnet50)
#      -> train-<backend>.csv
#   5. train-imagenet for a few hundred steps on a synthetic ImageNet-layout tree of JPEG files
#      written on the spot (decoding and cropping are in the measurement) -> train-imagenet-<backend>.csv
#   6. where there are several devices: train-imagenet data-parallel on 1, 2, ... N of them at
#      the same batch per device (dmnn50 with the full objective): images/s and scaling
#      efficiency -> scaling-<backend>.csv
set -euo pipefail

backend=cuda
quick=0
out=""
device=()
devices=""
while [ $# -gt 0 ]; do
    case "$1" in
        --backend) backend="$2"; shift 2 ;;
        --backend=*) backend="${1#*=}"; shift ;;
        --quick) quick=1; shift ;;
        --out) out="$2"; shift 2 ;;
        --out=*) out="${1#*=}"; shift ;;
        --device) device=(--device "$2"); shift 2 ;;
        --devices) devices="$2"; shift 2 ;;
        --devices=*) devices="${1#*=}"; shift ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "gpu-check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
case "$backend" in
    cuda|wgpu) ;;
    *) echo "gpu-check: --backend $backend is not cuda or wgpu" >&2; exit 2 ;;
esac

here="$(cd "$(dirname "$0")" && pwd)"
if [ -n "${DMNN_BIN:-}" ]; then
    dmnn="$DMNN_BIN"
elif [ -x "$here/dmnn" ]; then
    dmnn="$here/dmnn"
elif command -v dmnn >/dev/null; then
    dmnn="$(command -v dmnn)"
else
    echo "gpu-check: no dmnn binary (set DMNN_BIN, or put it next to this script)" >&2
    exit 2
fi
out="${out:-gpu-check-$backend-$(date +%Y%m%d-%H%M%S)}"
if [ -e "$out" ] && [ -n "$(ls -A "$out" 2>/dev/null)" ]; then
    echo "gpu-check: $out exists and is not empty; choose another --out" >&2
    exit 2
fi
mkdir -p "$out"
log="$out/log.txt"
start=$(date +%s)

if [ "$quick" = 1 ]; then
    model=dmnn_small; reference=resnet_small; size=32; batches=1,16
    train_batch=8; steps=12; classes=4; per_class=24; val_per_class=4; reps=2
else
    model=dmnn50; reference=resnet50; size=224; batches=1,16,64,256
    train_batch=64; steps=300; classes=10; per_class=400; val_per_class=10; reps=10
fi

step() {
    echo "== $1 ($(($(date +%s) - start)) s)" | tee -a "$log"
}
run() {
    echo "\$ $*" >>"$log"
    "$@" 2>&1 | tee -a "$log"
}

step "1. device"
{
    echo "host: $(uname -srm); $(nproc) cores"
    echo "dmnn: $dmnn"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv
    else
        echo "(no nvidia-smi)"
    fi
} | tee -a "$log"

step "2. sparse vs masked on $backend, kernel counts (dmnn_small, batch 256)"
run "$dmnn" bench --backend "$backend" "${device[@]}" --cases dmnn_small:28:1,256 --references none \
    --rates 0.25,0.5,0.75,1 --reps 3 --no-train --out "$out/check-$backend.csv"

step "3. inference: $model and $reference at $size px, batch $batches"
run "$dmnn" bench --backend "$backend" "${device[@]}" --cases "$model:$size:$batches" \
    --references "$reference:$size:$batches" --rates 0.25,0.5,0.75,1 --reps "$reps" --no-train \
    --out "$out/bench-$backend.csv"

step "4. training steps at batch $train_batch"
train_csv="$out/train-$backend.csv"
for m in "$model" "$reference"; do
    run "$dmnn" bench --backend "$backend" "${device[@]}" --train-case "$m:$size:$train_batch:1" --reps "$reps" \
        | grep -v '^(' >"$out/.train-$m.csv"
    if [ ! -s "$train_csv" ]; then head -1 "$out/.train-$m.csv" >"$train_csv"; fi
    tail -n +2 "$out/.train-$m.csv" >>"$train_csv"
    rm "$out/.train-$m.csv"
done
cat "$train_csv" | tee -a "$log"

step "5. train-imagenet, $steps steps of batch $train_batch on a synthetic tree"
run "$dmnn" synth-imagenet --out "$out/synthetic-imagenet" --classes "$classes" \
    --train-per-class "$per_class" --val-per-class "$val_per_class"
per_epoch=$(( classes * per_class / train_batch ))
epochs=$(( (steps + per_epoch - 1) / per_epoch ))
steps_per_epoch=$(( (steps + epochs - 1) / epochs ))
steps=$(( epochs * steps_per_epoch ))
t0=$(date +%s.%N)
run "$dmnn" train-imagenet --backend "$backend" "${device[@]}" --plain --data "$out/synthetic-imagenet" \
    --model "$model" --num-classes "$classes" --image-size "$size" --batch-size "$train_batch" \
    --eval-batch-size "$train_batch" --epochs "$epochs" --max-steps-per-epoch "$steps_per_epoch" --out "$out/run"
t1=$(date +%s.%N)
summary="$out/run/summary.json"
field() { grep -o "\"$1\": *[0-9.eE+-]*" "$summary" | head -1 | sed 's/.*: *//'; }
{
    echo "backend,model,image_size,batch,steps,wall_seconds,images_per_s,test_accuracy,macs_ratio_mean"
    awk -v b="$backend" -v m="$model" -v s="$size" -v bs="$train_batch" -v st="$steps" \
        -v w="$(field wall_seconds)" -v acc="$(field test_accuracy)" -v mr="$(field macs_ratio_mean)" \
        'BEGIN { printf "%s,%s,%s,%s,%s,%.1f,%.1f,%s,%s\n", b, m, s, bs, st, w, st * bs / w, acc, mr }'
} >"$out/train-imagenet-$backend.csv"
cat "$out/train-imagenet-$backend.csv" | tee -a "$log"
echo "(command wall time $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s; images/s over the run's wall time, validation included)" | tee -a "$log"

# the device lists of the scaling step: --devices A,B,C gives A / A,B / A,B,C; without it every
# CUDA GPU nvidia-smi lists, 1, 2, ... N of them
if [ -z "$devices" ] && [ "$backend" = cuda ] && command -v nvidia-smi >/dev/null; then
    gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
    if [ "${gpus:-0}" -ge 2 ]; then devices=$(seq -s, 0 $((gpus - 1))); fi
fi
if [ -n "$devices" ]; then
    IFS=, read -r -a all <<<"$devices"
    scaling="$out/scaling-$backend.csv"
    step "6. data-parallel scaling on ${#all[@]} devices ($devices), batch $train_batch per device"
    echo "backend,model,image_size,devices,global_batch,steps,wall_seconds,images_per_s,efficiency" >"$scaling"
    for k in $(seq 1 "${#all[@]}"); do
        list=$(IFS=,; echo "${all[*]:0:$k}")
        global=$(( k * train_batch ))
        per_epoch=$(( classes * per_class / global ))
        if [ "$per_epoch" -lt 1 ]; then echo "(too few images for $k devices)" | tee -a "$log"; break; fi
        k_steps=$(( steps / 5 < 4 ? 4 : steps / 5 ))
        k_epochs=$(( (k_steps + per_epoch - 1) / per_epoch ))
        k_per_epoch=$(( (k_steps + k_epochs - 1) / k_epochs ))
        k_steps=$(( k_epochs * k_per_epoch ))
        run "$dmnn" train-imagenet --backend "$backend" --devices "$list" --plain --data "$out/synthetic-imagenet" \
            --model "$model" --num-classes "$classes" --image-size "$size" --batch-size "$global" \
            --eval-batch-size "$train_batch" --max-eval-batches 1 --epochs "$k_epochs" \
            --max-steps-per-epoch "$k_per_epoch" --out "$out/run-devices-$k"
        summary="$out/run-devices-$k/summary.json"
        awk -v b="$backend" -v m="$model" -v s="$size" -v d="$list" -v g="$global" -v st="$k_steps" -v k="$k" \
            -v w="$(field wall_seconds)" -v one="$(awk -F, 'NR == 2 { print $8 }' "$scaling")" \
            'BEGIN { ips = st * g / w; e = (one == "" ? 1 : ips / (k * one));
                     printf "%s,%s,%s,\"%s\",%s,%s,%.1f,%.1f,%.3f\n", b, m, s, d, g, st, w, ips, e }' >>"$scaling"
    done
    cat "$scaling" | tee -a "$log"
fi
rm -rf "$out/synthetic-imagenet"

step "done: $out"
ls -l "$out" | tee -a "$log"
