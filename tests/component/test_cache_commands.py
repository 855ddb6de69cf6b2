"""Ollama's habits on the cache: ``modelfs rm`` (unlink), ``cp`` (another name, same manifest)
and ``du`` (bytes on disk per model and in all, a shared blob counted once)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from support.mount import run_modelfs

from modelfs.blobs.blobcache import BlobCache
from modelfs.formats.manifest import parse_manifest
from modelfs.formats.names import parse_name


def create(cache: Path, name: str, gguf: Path, *extra: str) -> None:
    run_modelfs("create", name, "--gguf", str(gguf), *extra, "--cache", str(cache))


def test_cp_names_the_same_manifest_and_rm_removes_only_what_is_unshared(
    small_gguf: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    create(cache, "127.0.0.1:5000/library/a:1", small_gguf)
    out = run_modelfs("cp", "127.0.0.1:5000/library/a:1", "127.0.0.1:5000/library/b:copy",
                      "--cache", str(cache)).stdout  # fmt: skip
    assert "copied 127.0.0.1:5000/library/a:1 to 127.0.0.1:5000/library/b:copy" in out
    bc = BlobCache(cache)
    a = bc.read_manifest(parse_name("127.0.0.1:5000/library/a:1"))
    assert a is not None and bc.read_manifest(parse_name("127.0.0.1:5000/library/b:copy")) == a

    run_modelfs("rm", "127.0.0.1:5000/library/a:1", "--cache", str(cache))
    assert bc.read_manifest(parse_name("127.0.0.1:5000/library/a:1")) is None
    # The copy still names every blob: none was removed.
    ls = run_modelfs("ls", "--cache", str(cache)).stdout
    assert "b:copy" in ls and "100.0%" in ls


def test_cp_of_a_model_not_in_the_cache_is_one_line(tmp_path: Path) -> None:
    result = run_modelfs("cp", "nothere", "other", "--cache", str(tmp_path), check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("modelfs: ") and "not complete" in lines[0]


def megabytes(line: str) -> float:
    number, unit = re.search(r"([\d.]+) (KB|MB|B)\b", line).groups()  # type: ignore[union-attr]
    return float(number) * {"B": 1e-6, "KB": 1e-3, "MB": 1.0}[unit]


def test_du_counts_a_blob_shared_by_two_models_once_in_the_total(
    small_gguf: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    create(cache, "127.0.0.1:5000/library/a:1", small_gguf)
    create(cache, "127.0.0.1:5000/library/a:2", small_gguf, "--system", "other")
    out = run_modelfs("du", "--cache", str(cache)).stdout.splitlines()
    rows = {line.split()[0]: megabytes(line) for line in out[1:]}
    on_disk = sum(os.stat(p).st_blocks * 512 for p in (cache / "blobs").iterdir()) / 1e6
    one, two = rows["127.0.0.1:5000/library/a:1"], rows["127.0.0.1:5000/library/a:2"]
    assert one >= small_gguf.stat().st_size / 1e6 and two >= one  # a:2 has one blob more
    assert abs(rows["total"] - on_disk) < 0.1, (out, on_disk)
    assert rows["total"] < one + two - 8, "the shared model blob was counted twice"
    only = run_modelfs("du", "127.0.0.1:5000/library/a:2", "--cache", str(cache)).stdout
    assert "a:2" in only and "a:1" not in only and "total" not in only


def test_ls_and_du_as_json_for_scripts(small_gguf: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    empty = run_modelfs("ls", "--json", "--cache", str(cache))
    assert json.loads(empty.stdout) == [] and empty.stderr == ""
    create(cache, "127.0.0.1:5000/library/a:1", small_gguf)
    create(cache, "127.0.0.1:5000/library/a:2", small_gguf, "--system", "other")
    bc = BlobCache(cache)
    a1 = bc.read_manifest(parse_name("127.0.0.1:5000/library/a:1"))
    assert a1 is not None
    m1 = parse_manifest(a1)

    models = json.loads(run_modelfs("ls", "--json", "--cache", str(cache)).stdout)
    assert [m["name"] for m in models] == [
        "127.0.0.1:5000/library/a:1",
        "127.0.0.1:5000/library/a:2",
    ]
    first = models[0]
    assert set(first) == {
        "name", "display", "digest", "size_bytes", "present_bytes", "complete", "verify",
    }  # fmt: skip
    assert first["display"] == "127.0.0.1:5000/library/a:1"
    assert first["digest"] == str(m1.digest)
    assert first["size_bytes"] == first["present_bytes"] == m1.total_bytes
    assert first["complete"] is True and first["verify"] == "complete"

    du = json.loads(run_modelfs("du", "--json", "--cache", str(cache)).stdout)
    assert set(du) == {"models", "unnamed_partial_bytes", "total_bytes"}
    assert du["unnamed_partial_bytes"] == 0
    on_disk = {m["name"]: m["disk_bytes"] for m in du["models"]}
    blobs = sum(os.stat(p).st_blocks * 512 for p in (cache / "blobs").iterdir())
    assert du["total_bytes"] == blobs
    assert on_disk["127.0.0.1:5000/library/a:1"] >= small_gguf.stat().st_size
    assert du["total_bytes"] < sum(on_disk.values()), "the shared blob was counted twice"
    one = json.loads(
        run_modelfs("du", "127.0.0.1:5000/library/a:2", "--json", "--cache", str(cache)).stdout
    )
    assert [m["name"] for m in one["models"]] == ["127.0.0.1:5000/library/a:2"]
