#!/usr/bin/env bash
# The README's first command: venv + install, small synthetic Sentinel-2 data sets written as real
# GeoTIFFs in the official layouts, a short CPU pretraining of the tiny SpectralGPT model, a
# finetuning run from it, and an evaluation that reads everything it needs
# (model, input size, classes, normalisation) from the finetuned checkpoint. It ends with the
# block of figures README quotes (scripts/demo_summary.py reads them back from the outputs).
#
# Environment knobs (all optional):
#   DEMO_OUT=demo_output   where data, checkpoints, logs and figures go
#   DEMO_NUM=192           number of synthetic fMoW-Sentinel images
#   DEMO_EPOCHS=20         pretraining epochs
#   DEMO_FT_NUM=300        synthetic EuroSAT images (shrinks with a short pretraining run; >= 40)
#   DEMO_FT_EPOCHS=10      finetuning epochs (idem)
#   DEMO_DEVICE=cpu        cpu or cuda
#   DEMO_SKIP_SETUP=1      use the current python instead of creating/updating .venv (tests do)
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${DEMO_OUT:-demo_output}
NUM=${DEMO_NUM:-192}
EPOCHS=${DEMO_EPOCHS:-20}
DEVICE=${DEMO_DEVICE:-cpu}
WARMUP=$(( EPOCHS >= 4 ? 2 : 0 ))
VIS_EVERY=$(( EPOCHS >= 10 ? EPOCHS / 4 : 1 ))
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
SECONDS=0

# ---- 1. environment ------------------------------------------------------------------------
if [ "${DEMO_SKIP_SETUP:-0}" = "1" ]; then
    PY=${PYTHON:-python3}
else
    source scripts/venv.sh
    PY=python
fi

# ---- 2. synthetic data: fMoW-Sentinel layout (13-band GeoTIFFs + CSV index) -------------------
echo "[demo] writing $NUM synthetic fMoW-Sentinel images to $OUT/fmow"
"$PY" -m util.data.synthetic fmow_sentinel "$OUT/fmow" --num "$NUM" --size 48 --seed 0

# ---- 3. pretraining: tiny 3D-token MAE at 32 px (the paper: mae_vit_base_patch8_96, 96 px, mask
# 0.90, 200 epochs on 8 GPUs). Progress bars show in a terminal; redirected, a line per log step.
echo "[demo] pretraining mae_vit_tiny_patch8_96 at 32 px for $EPOCHS epochs on $DEVICE"
"$PY" main_pretrain.py \
    --model mae_vit_tiny_patch8_96 --input_size 32 --mask_ratio 0.75 \
    --dataset_type fmow_sentinel --train_path "$OUT/fmow" \
    --epochs "$EPOCHS" --warmup_epochs "$WARMUP" --batch_size 16 --lr 1.5e-3 \
    --num_workers 2 --device "$DEVICE" --print_freq 10 --save_every 10 --vis_every "$VIS_EVERY" \
    --output_dir "$OUT/pretrain"
PRETRAINED="$OUT/pretrain/checkpoint-last.pth"  # `python -m util.training.checkpoint_meta info` summarises it

# ---- 4. finetuning: synthetic EuroSAT-layout data at 32 px (real EuroSAT is 64 px: the
# --native_size flag declares this copy's size), tiny classifier from the pretrained encoder -----
FT_NUM=${DEMO_FT_NUM:-$(( NUM >= 192 ? 300 : (NUM >= 40 ? NUM : 40) ))}  # >= 30: every class in every split; 40: a batch of 16 to train on
FT_EPOCHS=${DEMO_FT_EPOCHS:-$(( EPOCHS >= 10 ? 10 : EPOCHS ))}
FT_WARMUP=$(( FT_EPOCHS >= 4 ? 1 : 0 ))
echo "[demo] writing $FT_NUM synthetic EuroSAT images to $OUT/eurosat"
"$PY" -m util.data.synthetic eurosat "$OUT/eurosat" --num "$FT_NUM" --size 32 --seed 1
echo "[demo] finetuning vit_tiny_patch8_96 at 32 px from $PRETRAINED for $FT_EPOCHS epochs"
"$PY" main_finetune.py \
    --model vit_tiny_patch8_96 --input_size 32 --finetune "$PRETRAINED" \
    --dataset_type eurosat --train_path "$OUT/eurosat" --test_path "$OUT/eurosat" --native_size 32 \
    --epochs "$FT_EPOCHS" --warmup_epochs "$FT_WARMUP" --batch_size 16 --lr 2e-3 \
    --num_workers 2 --device "$DEVICE" --print_freq 5 --output_dir "$OUT/finetune"
FINETUNED="$OUT/finetune/checkpoint-best.pth"

# ---- 5. evaluation: model, input size (and the data's native size), classes and normalisation
# come from the checkpoint ---------------------------------------------------------------------
echo "[demo] evaluating $FINETUNED on the validation split"
"$PY" main_finetune.py --eval --resume "$FINETUNED" \
    --test_path "$OUT/eurosat" --device "$DEVICE" --num_workers 2 \
    --output_dir "$OUT/eval"

# ---- 6. change detection (dense issue): synthetic OSCD cities, tiny change detector ------------
# Knob: DEMO_CD_EPOCHS (default 4). Validation = 1 held-out training city; test = the test cities,
# evaluated once at the end on whole scenes with the checkpoint chosen on validation.
CD_EPOCHS=${DEMO_CD_EPOCHS:-$(( EPOCHS >= 4 ? 4 : EPOCHS ))}
echo "[demo] writing 8 synthetic OSCD cities to $OUT/oscd"
"$PY" -m util.data.synthetic oscd "$OUT/oscd" --num 8 --size 64 --seed 2
echo "[demo] change detection: change_detector_vit_tiny_patch8_128 at 32 px from $PRETRAINED"
"$PY" downstream_tasks/train.py --task oscd --data_root "$OUT/oscd" \
    --model change_detector_vit_tiny_patch8_128 --model_kwargs reduction=mean channels=64 \
    --input_size 32 --finetune "$PRETRAINED" --epochs "$CD_EPOCHS" --warmup_epochs 0 \
    --batch_size 8 --crop_repeats 4 --lr 2e-3 --drop_path 0 --layer_decay 1 \
    --class_weights inverse_freq --val_cities 1 --num_workers 0 --device "$DEVICE" \
    --save_predictions "$OUT/oscd_run/pred" --output_dir "$OUT/oscd_run"

# ---- 7. what pretraining buys (label-efficiency issue): kNN on frozen features --------------------
# k = 20 cosine neighbours, temperature-weighted votes, on 10 % and all of the training labels;
# random init = the same architecture with seeded random weights (3 seeds).
echo "[demo] kNN accuracy of the pretrained encoder vs random init (frozen features)"
"$PY" benchmarks/label_efficiency.py --checkpoint "$PRETRAINED" --data_root "$OUT/eurosat" \
    --native_size 32 --protocols knn --fractions 10 100 --device "$DEVICE" --out "$OUT/label_efficiency/knn.json"

# ---- summary ---------------------------------------------------------------------------------
ELAPSED=$SECONDS
echo
echo "[demo] done in ${ELAPSED} s. Outputs:"
echo "  pretrained checkpoint: $PRETRAINED"
echo "  training log:          $OUT/pretrain/log.jsonl (TensorBoard: tensorboard --logdir $OUT/pretrain)"
echo "  reconstruction figure: $(ls -1 "$OUT"/pretrain/reconstruction-*.png | sort -V | tail -n 1)"
echo "  finetuned classifier:  $FINETUNED (metrics: $OUT/finetune/log.jsonl)"
echo "  change detection:      $OUT/oscd_run/checkpoint-best.pth, scene PNGs in $OUT/oscd_run/vis,"
echo "                         GeoTIFF predictions in $OUT/oscd_run/pred (metrics: log.jsonl)"
echo "  kNN, pretrained vs random init: $OUT/label_efficiency/knn.json (plot: knn.png)"
# the figures README quotes (its "Demo" section), read back from this run's outputs
echo
"$PY" scripts/demo_summary.py "$OUT" --seconds "$ELAPSED"
