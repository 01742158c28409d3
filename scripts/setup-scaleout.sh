#!/usr/bin/env bash
# Idempotent set-up for the scale-out tests (tests/scaleout.rs): Debian's Slurm and munge
# (a private one-node cluster is started from them by scripts/slurm-local.sh, as plain
# processes) and the kubernetes-validate package with its offline API schemas, kept in
# .deps/k8s-python. Run as root, or with sudo available.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need_apt=()
for pkg in slurmctld slurmd slurm-client munge; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup-scaleout: installing ${need_apt[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

kv_version=1.37.0
kv_dir="$here/.deps/k8s-python"
if ! PYTHONPATH="$kv_dir" python3 -c "import kubernetes_validate, sys; sys.exit(kubernetes_validate.__version__ != '$kv_version')" 2>/dev/null; then
  echo "setup-scaleout: installing kubernetes-validate $kv_version into .deps/k8s-python" >&2
  rm -rf "$kv_dir.tmp"
  python3 -m pip install --quiet --disable-pip-version-check --target "$kv_dir.tmp" "kubernetes-validate==$kv_version"
  rm -rf "$kv_dir" && mv "$kv_dir.tmp" "$kv_dir"
fi
echo "setup-scaleout: ok" >&2
