#!/usr/bin/env bash
# Rebuilds the demo models shipped here (demo-tempcnn/, demo-lstm/) from data/demo
# (`sitsflow demo-data data/demo`), seeded: same inputs and machine type → same files
# except timings. Needs scripts/setup-python.sh; uses .deps/onnxruntime-* (scripts/setup.sh)
# when present to cross-check the exports.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ort="$(ls -d "$root"/.deps/onnxruntime-* 2>/dev/null | head -1 || true)"
export PYTHONPATH="$root/.deps/models-python:$root/models${ort:+:$ort}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m sitsflow_models.demo_samples --demo "$root/data/demo" --year 2018 --per-class 300 --seed 0 \
  --train "$work/train.csv" --test "$work/test.csv"
note="Trained on a stratified sample of 2018 pixels of the generated demo data (python -m \
sitsflow_models.demo_samples --demo data/demo --year 2018 --per-class 300 --seed 0; test = other 16x16 blocks). \
Applies to the 12 acquisitions of any demo year: the host maps a year's k-th date to input step k \
(input.dates lists the 2018 dates). Reflectance 0..1; pixels the SCL band calls shadow/cloud/cirrus \
(3, 8, 9, 10) are fed as NaN. Full TempCNN / LSTM widths (the graphs are under 1 MB, nothing was shrunk). \
Mineral (code 4) has no 2018 pixel, so the model has no output for it."
# A few test rows (every 28th: all classes, some with cloudy dates = NaN) and the PyTorch
# probabilities for them: the host checks its ONNX Runtime inference against these
# without Python.
head -1 "$work/test.csv" > "$root/models/pretrained/check-samples.csv"
awk 'NR > 1 && (NR - 2) % 28 == 0' "$work/test.csv" >> "$root/models/pretrained/check-samples.csv"
for arch in tempcnn lstm; do
  python3 -m sitsflow_models train --contract 1 --samples "$work/train.csv" --test "$work/test.csv" \
    --classes "$root/data/demo/classes.csv" --arch "$arch" --seed 0 --out "$work/$arch" --note "$note" >/dev/null
  mkdir -p "$root/models/pretrained/demo-$arch"
  # The demo needs model.onnx, model.json and metrics.json; model.pt (the PyTorch weights)
  # ships too, so `cargo bench --bench inference` can time PyTorch on the same model.
  cp "$work/$arch"/{model.onnx,model.pt,model.json,metrics.json} "$root/models/pretrained/demo-$arch/"
  python3 -m sitsflow_models predict --model "$work/$arch/model.onnx" \
    --samples "$root/models/pretrained/check-samples.csv" \
    --out "$root/models/pretrained/demo-$arch/check-probabilities.csv" >/dev/null
done
echo "rebuild: ok" >&2
