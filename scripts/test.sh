#!/usr/bin/env bash
# Sets everything up, then runs the checks and every test under tests/ (unit, component, mount, systemd).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check modelfs tests bench
.venv/bin/ruff format --check modelfs tests bench
exec .venv/bin/python -m pytest "$@"
