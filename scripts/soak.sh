#!/usr/bin/env bash
# The soak run (not part of the tests): sets up as scripts/setup.sh, then bench/soak.py, which
# rewrites bench/SOAK.md. Needs root. Arguments: [--minutes 10] [--readers 8] [--seed N]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python bench/soak.py "$@"
