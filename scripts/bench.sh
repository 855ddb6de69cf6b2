#!/usr/bin/env bash
# The benchmark: sets up (as scripts/setup.sh, plus the peers rclone, httpdirfs and nginx),
# then runs bench/bench.py, which rewrites bench/RESULTS.md. Needs root. Takes ~10 minutes.
# --fleet [options]: only the fleet benchmark (bench/fleet.py: N mounts reading one cold model
# through the origin, a docker-registry mirror and the nginx mirror tier), which rewrites
# bench/FLEET.md; ~8 minutes. Options: --mib M, --n 1,4, --configs a,b,c, --timeout S.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [[ "${1:-}" == --fleet ]]; then
    shift
    command -v nginx >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
    exec .venv/bin/python bench/fleet.py "$@"
fi
if ! command -v rclone >/dev/null || ! command -v httpdirfs >/dev/null || ! command -v nginx >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rclone httpdirfs nginx-light >/dev/null
fi
# py-spy profiles the daemon during a cold read (bench only, not a dependency of modelfs).
.venv/bin/pip install -q py-spy
exec .venv/bin/python bench/bench.py "$@"
