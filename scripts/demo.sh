#!/usr/bin/env bash
# The README's first command: venv + install, a small synthetic Sentinel-2 dataset written as real
# GeoTIFFs, a short CPU pretraining of the tiny SpectralGPT model (then finetuning, see below).
#
# Environment knobs (all optional):
#   DEMO_OUT=demo_output   where data, checkpoints, logs and figures go
#   DEMO_NUM=192           number of synthetic fMoW-Sentinel images
#   DEMO_EPOCHS=20         pretraining epochs
#   DEMO_DEVICE=cpu        cpu or cuda
#   DEMO_SKIP_SETUP=1      use the current python instead of creating/updating .venv (tests do)
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${DEMO_OUT:-demo_output}
NUM=${DEMO_NUM:-192}
EPOCHS=${DEMO_EPOCHS:-20}
DEVICE=${DEMO_DEVICE:-cpu}
WARMUP=$(( EPOCHS >= 4 ? 2 : 0 ))

# ---- 1. environment ------------------------------------------------------------------------
if [ "${DEMO_SKIP_SETUP:-0}" = "1" ]; then
    PY=${PYTHON:-python3}
else
    source scripts/venv.sh
    PY=python
fi

# ---- 2. synthetic data: fMoW-Sentinel layout (13-band GeoTIFFs + CSV index) -------------------
echo "[demo] writing $NUM synthetic fMoW-Sentinel images to $OUT/fmow"
"$PY" -m util.synthetic fmow_sentinel "$OUT/fmow" --num "$NUM" --size 48 --seed 0

# ---- 3. pretraining: tiny 3D-token MAE at 32 px, a few minutes at most on 2 CPU cores ---------
# (the paper's recipe: --model mae_vit_base_patch8_96 --input_size 96 --mask_ratio 0.90 on GPUs)
echo "[demo] pretraining mae_vit_tiny_patch8_96 at 32 px for $EPOCHS epochs on $DEVICE"
"$PY" main_pretrain.py \
    --model mae_vit_tiny_patch8_96 --input_size 32 --mask_ratio 0.75 \
    --dataset_type fmow_sentinel --train_path "$OUT/fmow" \
    --epochs "$EPOCHS" --warmup_epochs "$WARMUP" --batch_size 16 --lr 1e-3 \
    --num_workers 2 --device "$DEVICE" --print_freq 5 --save_every 10 --vis_every 5 \
    --output_dir "$OUT/pretrain"
PRETRAINED="$OUT/pretrain/checkpoint-last.pth"

# ---- 4. finetuning (finetuning issue): synthetic EuroSAT-layout data, tiny classifier -----------
# Knobs: DEMO_FT_NUM (images, default 300), DEMO_FT_EPOCHS (default 10); both shrink with a short
# pretraining run (DEMO_NUM < 192 / DEMO_EPOCHS < 10) so quick checks stay quick.
FT_NUM=${DEMO_FT_NUM:-$(( NUM >= 192 ? 300 : NUM ))}
FT_EPOCHS=${DEMO_FT_EPOCHS:-$(( EPOCHS >= 10 ? 10 : EPOCHS ))}
FT_WARMUP=$(( FT_EPOCHS >= 4 ? 1 : 0 ))
echo "[demo] writing $FT_NUM synthetic EuroSAT images to $OUT/eurosat"
"$PY" -m util.synthetic eurosat "$OUT/eurosat" --num "$FT_NUM" --size 32 --seed 1
echo "[demo] finetuning vit_tiny_patch8_96 at 32 px from $PRETRAINED for $FT_EPOCHS epochs"
"$PY" main_finetune.py \
    --model vit_tiny_patch8_96 --input_size 32 --finetune "$PRETRAINED" \
    --dataset_type eurosat --train_path "$OUT/eurosat" --test_path "$OUT/eurosat" \
    --epochs "$FT_EPOCHS" --warmup_epochs "$FT_WARMUP" --batch_size 16 --lr 2e-3 \
    --num_workers 2 --device "$DEVICE" --print_freq 5 --output_dir "$OUT/finetune"
FINETUNED="$OUT/finetune/checkpoint-best.pth"

# ---- 5. what pretraining buys (label-efficiency issue): kNN on frozen features --------------------
# k = 20 cosine neighbours, temperature-weighted votes, on 10 % and all of the training labels;
# random init = the same architecture with seeded random weights (3 seeds).
echo "[demo] kNN accuracy of the pretrained encoder vs random init (frozen features)"
"$PY" benchmarks/label_efficiency.py --checkpoint "$PRETRAINED" --data_root "$OUT/eurosat" \
    --native_size 32 --protocols knn --fractions 10 100 --device "$DEVICE" --out "$OUT/label_efficiency/knn.json"

# ---- summary ---------------------------------------------------------------------------------
echo
echo "[demo] done. Outputs:"
echo "  pretrained checkpoint: $PRETRAINED"
echo "  training log:          $OUT/pretrain/log.jsonl (TensorBoard: tensorboard --logdir $OUT/pretrain)"
echo "  reconstruction figure: $(ls -1 "$OUT"/pretrain/reconstruction-*.png | sort -V | tail -n 1)"
echo "  finetuned classifier:  $FINETUNED (metrics: $OUT/finetune/log.jsonl)"
echo "  kNN, pretrained vs random init: $OUT/label_efficiency/knn.json (plot: knn.png)"
