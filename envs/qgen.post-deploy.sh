#!/usr/bin/env bash
# Snakemake runs this inside the environment it has just created from envs/qgen.yaml (`--sdm conda`), from
# the workflow's working directory: it installs qgen itself (editable, so the jobs run this checkout's code),
# else every rule's `qgen` would be whatever another environment on PATH provides.
set -euo pipefail
root="${QGEN_SOURCE:-$PWD}"
if ! grep -qs '^name = "qgen"$' "$root/pyproject.toml"; then
  echo "envs/qgen.post-deploy.sh: $root is no qgen checkout; run snakemake from the repository or set QGEN_SOURCE to it" >&2
  exit 1
fi
python -m pip install --no-deps --editable "$root"
