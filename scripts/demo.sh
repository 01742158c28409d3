#!/usr/bin/env bash
# The main command (README): set up the machine, build the host and the plugins,
# generate the embedded demo data if absent, and run configs/demo.toml on it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
# shellcheck source=env.sh
source scripts/env.sh
bash scripts/build-plugins.sh
sitsflow=target/release/sitsflow
# The plugins were just built from this checkout's sources: pin them.
"$sitsflow" --quiet plugins lock configs/demo.toml >/dev/null
[ -d data/demo/series ] || "$sitsflow" demo-data data/demo
"$sitsflow" run configs/demo.toml
echo "demo: outputs, manifest.json and report.html in runs/demo/"
# The same series through the shipped TempCNN (ONNX Runtime) and a Markov chain.
"$sitsflow" --quiet plugins lock configs/demo-tempcnn.toml >/dev/null
"$sitsflow" run configs/demo-tempcnn.toml
echo "demo: TempCNN + Markov chain in runs/demo-tempcnn/"
