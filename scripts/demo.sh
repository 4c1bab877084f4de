#!/usr/bin/env bash
# The main job on a fresh machine, offline and on the CPU: set up ./.venv, build the embedded
# 6-class "shapes" dataset, train a tiny conditional StyleGAN2 + ADA for a few minutes while a
# classifier trained on the shapes' labels counts how many generated images it recognises, then
# draw one row per class and put it beside the reals.
# Environment: DEMO_KIMG (training length, default 80), DEMO_OUT (default runs/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate

out=${DEMO_OUT:-runs/demo}
kimg=${DEMO_KIMG:-80}
mkdir -p "$out"

echo "[demo] 1/3 building the embedded dataset (6,000 procedurally drawn shapes of 6 classes, 16x16)"
if [ ! -f "$out/shapes-16.zip" ]; then
    python dataset_tool.py --source=builtin:shapes --dest="$out/shapes-16.zip" --max-images=6000 --resolution=16x16
fi

echo "[demo] 2/3 training a tiny conditional StyleGAN2 + ADA on the CPU for $kimg kimg"
echo "[demo]     every 10 kimg, labelnet_rr: the share of 1,000 generated images that a small classifier"
echo "[demo]     trained on the dataset's own labels recognises (confidence >= 0.9), and as the class asked for"
# Batch 32 costs less CPU per image than 16; channels-last only changes the memory layout (and rounding).
python train.py --outdir="$out/runs" --data="$out/shapes-16.zip" --cfg=tiny --cond=1 --aug=ada --mirror=1 \
    --batch=32 --channels-last=1 --kimg="$kimg" --tick=1 --snap=10 --metrics=labelnet_rr --workers=0

run_dir=$(ls -d "$out"/runs/*/ | sort | tail -n 1)
snapshot=$(ls "$run_dir"network-snapshot-*.pkl | sort | tail -n 1)

echo "[demo] 3/3 generating 8 images per class from $snapshot"
python generate.py --network="$snapshot" --seeds=0-7 --all-classes --grid --zoom=4 --outdir="$out/generated" >/dev/null
# reals.png has one row per class (rows cycle through the 6 classes): its first 6 rows, enlarged
# like the generated grid, go on the left.
python - "$run_dir/reals.png" "$out/generated/grid.png" "$out/reals_vs_generated.png" <<'EOF'
import sys
import numpy as np
import PIL.Image
reals = np.array(PIL.Image.open(sys.argv[1]).convert('RGB'))[:6 * 16].repeat(4, 0).repeat(4, 1)
fakes = np.array(PIL.Image.open(sys.argv[2]).convert('RGB'))
gap = np.full([reals.shape[0], 16, 3], 255, np.uint8)
PIL.Image.fromarray(np.concatenate([reals, gap, fakes], axis=1)).save(sys.argv[3])
EOF

echo
echo "[demo] done. Recognised by the classifier at each snapshot (all / as the class asked for):"
python - "$run_dir/metric-labelnet_rr.jsonl" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"[demo]   {r['snapshot_pkl']}: {r['results']['labelnet_rr']:6.1%} / {r['results']['labelnet_rr_asked']:6.1%}")
EOF
echo "[demo] reals (left) and generated images (right), one row per class: $out/reals_vs_generated.png"
echo "[demo] training log and grids: ${run_dir} (reals.png, fakes_init.png, fakes*.png)"
echo "[demo] generated images:       $out/generated/ (classNN-seedNNNN.png, grid.png)"
