#!/usr/bin/env bash
# The one-shot GPU check on a lent machine that reaches no package index: `mrgen bench gpu`, with the packages its
# image lacks carried in .gpu/site.tar.xz (built here by infra/gpu-pack.sh: a Python 3.12 site-packages tree with
# ray, deepspeed, diffusers, open_clip, pydantic, ...). infra/gpu-check.sh is the same check where pip works.
#
#   device run:    bash infra/gpu-offline-check.sh           (the device tool's carry: [".gpu"])
#   CPU emulation: BENCH_DEVICE=cpu BENCH_TINY=1 OUT=/tmp/out PYTHON=python3.12 bash infra/gpu-offline-check.sh
#
# Settings (environment): BENCH_DEVICE (cuda), BENCH_TINY (0; 1 adds --tiny), BENCH_SECTIONS
# ("tiny_stages paper_training synthesis"), BENCH_TIMEOUT (480 s), SITE_TAR (.gpu/site.tar.xz),
# SITE_DIR (/tmp/site), PYTHON (python3), OUT (the tool's output folder).
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-/tmp/mrgen-gpu-out}"
PY="${PYTHON:-python3}"
DEV="${BENCH_DEVICE:-cuda}"
SECTIONS="${BENCH_SECTIONS:-tiny_stages paper_training synthesis}"
SITE="${SITE_DIR:-/tmp/site}"
TAR="${SITE_TAR:-$REPO/.gpu/site.tar.xz}"
TINY=()
[ "${BENCH_TINY:-0}" = 1 ] && TINY=(--tiny)
mkdir -p "$OUT"

echo "== nvidia-smi"; nvidia-smi || echo "(no nvidia-smi)"
echo "== unpacking $TAR -> $SITE"
start=$(date +%s)
rm -rf "$SITE" && mkdir -p "$SITE" && tar -xJf "$TAR" -C "$SITE" || { echo "unpack failed"; exit 2; }
echo "unpacked in $(( $(date +%s) - start )) s: $(du -sh "$SITE" | cut -f1)"

# `mrgen` without pip: a folder holding one link named mrgen -> the repo (its top-level folders are namespace
# subpackages). The repo root itself stays off sys.path (its folders platform/, datasets/ would shadow or confuse),
# so python runs from a neutral folder: with -c, sys.path[0] is the cwd, and Ray puts the driver's cwd on its
# workers' sys.path too.
mkdir -p /tmp/pkgs && ln -sfn "$REPO" /tmp/pkgs/mrgen
export PYTHONPATH="/tmp/pkgs:$SITE${PYTHONPATH:+:$PYTHONPATH}"  # inherited by Ray's raylet and workers
export PATH="$SITE/bin:$PATH"  # ray, ds_report (shebang: /usr/bin/env python3)
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled HF_HUB_OFFLINE=1 RAY_DATA_DISABLE_PROGRESS_BARS=1 \
       RAY_ADDRESS=local PYTHONUNBUFFERED=1
mkdir -p /tmp/mrgen-cwd && cd /tmp/mrgen-cwd || exit 2

echo "== versions"
"$PY" - <<'EOF' || { echo "imports failed"; exit 3; }
import sys, importlib
print("python", sys.version.split()[0])
for name in ("torch", "numpy", "ray", "deepspeed", "diffusers", "open_clip", "pydantic", "transformers", "timm",
             "huggingface_hub", "typing_extensions", "mrgen.jobs.bench.gpu_bench"):
    m = importlib.import_module(name)
    print(f"{name:28s} {getattr(m, '__version__', '-'):14s} {m.__file__}")
import torch
print("cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF

echo "== mrgen bench gpu --device $DEV ${TINY[*]} --sections $SECTIONS"
# shellcheck disable=SC2086
timeout "${BENCH_TIMEOUT:-480}" "$PY" -c 'from mrgen.cli.main import main; raise SystemExit(main())' \
    bench gpu --device "$DEV" "${TINY[@]}" --sections $SECTIONS --out "$OUT/gpu.json" 2>&1 | tee "$OUT/gpu.log"
rc=$?
echo "== bench exit status $rc"
[ -f "$OUT/gpu.json" ] && cat "$OUT/gpu.json"
# Ray's session logs (raylet, workers) when something failed
if [ "$rc" != 0 ] && [ -d /tmp/ray/session_latest/logs ]; then
    tar -czf "$OUT/ray-logs.tgz" -C /tmp/ray/session_latest logs 2>/dev/null
fi
exit "$rc"
