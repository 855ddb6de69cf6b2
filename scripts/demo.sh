#!/usr/bin/env bash
# The whole job, end to end: a local registry, SmolLM2 created and pushed to it, mounted with an
# empty cache, listed and read with ls and cat, unmounted. KEEP=1 leaves it mounted to explore.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
MODELFS="$PWD/.venv/bin/modelfs"

WORK=$(mktemp -d /tmp/modelfs-demo.XXXXXX)
PORT=5000
if (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; then
    PORT=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
fi
HOST=127.0.0.1:$PORT
NAME=$HOST/library/smollm2:135m
TAG=$WORK/mnt/$HOST/library/smollm2/135m

cleanup() {
    if [ "${KEEP:-}" != 1 ]; then
        mountpoint -q "$WORK/mnt" 2>/dev/null && "$MODELFS" umount "$WORK/mnt" || true
        [ -n "${REGISTRY_PID:-}" ] && kill "$REGISTRY_PID" 2>/dev/null || true
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

cat >"$WORK/registry.yml" <<YML
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $WORK/registry}, delete: {enabled: true}}
http: {addr: $HOST}
YML
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
REGISTRY_PID=$!
for _ in $(seq 100); do curl -fs "http://$HOST/v2/" >/dev/null && break; sleep 0.1; done
echo "registry: docker-registry on http://$HOST (storage in $WORK/registry)"

GGUF=$(.venv/bin/python tests/gguf_synth.py smollm2)
printf '{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n' >"$WORK/tmpl.txt"

step modelfs create "$NAME" --gguf "$(basename "$GGUF")" --template tmpl.txt --system "You are helpful." --params '{"temperature":0.2}'
"$MODELFS" create "$NAME" --gguf "$GGUF" --template "$WORK/tmpl.txt" --system "You are helpful." \
    --params '{"temperature":0.2}' --cache "$WORK/source-cache"
step modelfs push "$NAME"
"$MODELFS" push "$NAME" --cache "$WORK/source-cache"

mkdir -p "$WORK/mnt"
step OLLAMA_MODELS="$WORK/empty" modelfs mount "$WORK/mnt"
OLLAMA_MODELS="$WORK/empty" "$MODELFS" mount "$WORK/mnt"
step ls -l "$TAG/"
ls -l "$TAG/"
step cat "$TAG/params.json"
cat "$TAG/params.json"; echo
step cat "$TAG/system"
cat "$TAG/system"; echo
step "head -c 64 $TAG/model.gguf | od -A d -c | head -3      # the GGUF header, fetched lazily"
head -c 64 "$TAG/model.gguf" | od -A d -c | head -3
.venv/bin/python - "$TAG/model.gguf" <<'PY'
import sys
from modelfs.formats.gguf import read_gguf_file
info = read_gguf_file(sys.argv[1])
print(f"GGUF v{info.version}: {info.architecture}, {info.file_type}, "
      f"{info.parameter_count:,} parameters, {len(info.tensors)} tensors, "
      f"header {info.header_bytes:,} bytes")
PY
step sha256sum "$TAG/model.gguf" "$(basename "$GGUF")"
sha256sum "$TAG/model.gguf" "$GGUF"
step modelfs ls   "# every blob verified and published: Ollama's layout, usable by ollama itself"
OLLAMA_MODELS="$WORK/empty" "$MODELFS" ls
find "$WORK/empty/blobs" "$WORK/empty/manifests" -type f | sed "s|$WORK/||"
step "ls -l $TAG/model.gguf   # complete now: a link into a read-only view of the cache"
for _ in $(seq 50); do [ -L "$TAG/model.gguf" ] && break; sleep 0.1; done
ls -l "$TAG/model.gguf"

if [ "${KEEP:-}" = 1 ]; then
    echo
    echo "mounted at $WORK/mnt (registry pid $REGISTRY_PID); when done:"
    echo "  $MODELFS umount $WORK/mnt; kill $REGISTRY_PID; rm -rf $WORK"
else
    step modelfs umount "$WORK/mnt"
    "$MODELFS" umount "$WORK/mnt"
fi
