#!/usr/bin/env bash
# The benchmark: sets up (as scripts/setup.sh, plus the peers rclone, httpdirfs and nginx),
# then runs bench/bench.py, which rewrites bench/RESULTS.md. Needs root. Takes ~10 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v rclone >/dev/null || ! command -v httpdirfs >/dev/null || ! command -v nginx >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rclone httpdirfs nginx-light >/dev/null
fi
# py-spy profiles the daemon during a cold read (bench only, not a dependency of modelfs).
.venv/bin/pip install -q py-spy
exec .venv/bin/python bench/bench.py "$@"
