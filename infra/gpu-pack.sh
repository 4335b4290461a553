#!/usr/bin/env bash
# Packs the Python packages a lent GPU machine lacks into .gpu/site.tar.xz, for machines that reach no package index
# (the `device` tool's H200: Python 3.12 with torch, numpy, transformers, timm, huggingface_hub; no pip access).
# infra/gpu-offline-check.sh unpacks it there and runs `mrgen bench gpu`. Run here, where PyPI is reachable:
#
#   infra/gpu-pack.sh            → .gpu/site.tar.xz (~31 MiB; the device tool carries at most 64 MiB with the repo)
#
# Settings (environment): PYVER (3.12, the GPU machine's), PYENV_PY (a python of that version to install with:
# python3.12), SITE_TAR (.gpu/site.tar.xz).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYVER="${PYVER:-3.12}"
PY="${PYENV_PY:-python$PYVER}"
TAR="${SITE_TAR:-$REPO/.gpu/site.tar.xz}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
PACKAGES=(ray==2.60.0 deepspeed==0.19.8 diffusers==0.42.1 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4
          pydantic==2.14.4 pydantic_core==2.50.5 annotated_types==0.8.0 typing_inspection==0.4.5
          typing_extensions==4.16.0 hjson==3.1.0 jsonschema==4.26.0 jsonschema_specifications==2025.9.1
          referencing==0.37.0 rpds_py==2026.9.1 tensorboardx==2.6.5)

echo "== wheels for Python $PYVER (manylinux x86_64)"
binary=()
for p in "${PACKAGES[@]}"; do [[ $p == deepspeed==* ]] || binary+=("$p"); done
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform any --dest "$WORK/wheels" "${binary[@]}"
# deepspeed is an sdist on PyPI: build its pure-Python wheel (its ops are JIT-built on the GPU machine)
"$REPO/.venv/bin/pip" wheel --quiet --no-deps --no-build-isolation --wheel-dir "$WORK/wheels" deepspeed==0.19.8

echo "== installing into a site folder and trimming"
"$PY" -m pip install --quiet --no-deps --no-index --target "$WORK/site" "$WORK"/wheels/*.whl
# What `mrgen bench gpu` never imports: Ray's Java jars, RLlib, Ray LLM, the dashboard's web build; tests; caches
rm -rf "$WORK/site/ray/jars" "$WORK/site/ray/rllib" "$WORK/site/ray/llm" "$WORK/site/ray/dashboard/client/build"
find "$WORK/site" -depth \( -name __pycache__ -o -name tests -o -name "*.pyc" \) -exec rm -rf {} +

mkdir -p "$(dirname "$TAR")"
(cd "$WORK/site" && XZ_OPT="${XZ_OPT:--9}" tar -cJf "$TAR.tmp" .)
mv "$TAR.tmp" "$TAR"
printf '%s\n' "${PACKAGES[@]}" > "$(dirname "$TAR")/PACKAGES.txt"
echo "wrote $TAR ($(du -h "$TAR" | cut -f1)) for Python $PYVER"
