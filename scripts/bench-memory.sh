#!/usr/bin/env bash
# The memory benchmark (issue 15, item 3): the demo chain (configs/demo.toml: SCL mask,
# per-year index statistics, k-means, reliable samples, two random forests, Markov
# chain) on a SIZE² × 36-date demo series, once per memory budget, each run's peak
# resident memory against its budget (the baseline) and the node that peaked.
#
#   bash scripts/bench-memory.sh                  # SIZE=2048, budgets 256,512,1024
#   SIZE=1024 BUDGETS=256 bash scripts/bench-memory.sh
#
# Writes bench-memory-SIZE.json in the checkout (git-ignored) and exits 1 when a run
# held more than its budget. The 2048² series (about 6 GB) goes to data/demo-SIZE/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
size="${SIZE:-2048}"
budgets="${BUDGETS:-256,512,1024}"
bash scripts/setup.sh
# shellcheck source=env.sh
source scripts/env.sh
bash scripts/build-plugins.sh
sitsflow=target/release/sitsflow
data="data/demo-$size"
[ -d "$data/series" ] || "$sitsflow" demo-data "$data" --size "$size"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
sed -e "s#\.\./data/demo#$root/$data#g" -e "s#\.\./plugins/dist#$root/plugins/dist#" \
    -e "s#\.\./runs/demo#$work/run#" configs/demo.toml > "$work/pipeline.toml"
cp configs/nomenclature -r "$work/"
"$sitsflow" --quiet plugins lock "$work/pipeline.toml" >/dev/null
"$sitsflow" bench "$work/pipeline.toml" --memory-budgets "$budgets" --out "bench-memory-$size.json"
