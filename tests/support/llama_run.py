"""Load a GGUF model with llama.cpp (llama-cpp-python, mmap on) and complete a prompt at
temperature 0; print what it generated and what llama.cpp sized, as one JSON line.

Run as a separate process (``python tests/support/llama_run.py MODEL``), so a model mapped
from a mount is unmapped before the mount goes, and a reader killed with the daemon under
it dies alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "The capital of France is"
KV_RE = re.compile(r"llama_kv_cache: +size = +([0-9.]+) MiB \( *(\d+) cells")
WEIGHTS_RE = re.compile(r"CPU_Mapped model buffer size = +([0-9.]+) MiB")


@contextlib.contextmanager
def stderr_to(path: str):
    """llama.cpp logs from C to fd 2: send it to a file for the duration."""
    saved = os.dup(2)
    with open(path, "wb") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--tokens", type=int, default=24)
    p.add_argument("--prompt", default=PROMPT)
    args = p.parse_args()

    from llama_cpp import Llama

    with tempfile.NamedTemporaryFile(prefix="llama-log-") as log:
        start = time.perf_counter()
        with stderr_to(log.name):
            llm = Llama(
                model_path=args.model,
                n_ctx=args.ctx,
                n_threads=2,
                use_mmap=True,
                seed=0,
                verbose=True,
            )
            loaded = time.perf_counter()
            first = None
            pieces = []
            for part in llm.create_completion(
                args.prompt, max_tokens=args.tokens, temperature=0.0, stream=True
            ):
                if first is None:
                    first = time.perf_counter()
                pieces.append(part["choices"][0]["text"])
            llm.close()
        text = Path(log.name).read_text(errors="replace")
    kv = KV_RE.search(text)
    weights = WEIGHTS_RE.search(text)
    print(
        json.dumps(
            {
                "text": "".join(pieces),
                "load_seconds": loaded - start,
                "first_token_seconds": (first or loaded) - start,
                "kv_cache_mib": float(kv.group(1)) if kv else None,
                "kv_cells": int(kv.group(2)) if kv else None,
                "weights_mib": float(weights.group(1)) if weights else None,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
