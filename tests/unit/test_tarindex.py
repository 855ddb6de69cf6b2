"""modelfs.formats.tarindex: tar members as byte ranges of the blob, from headers alone."""

from __future__ import annotations

import io
import tarfile

import pytest

from modelfs.errors import ManifestInvalid
from modelfs.formats.tarindex import BLOCK_BYTES, TarNeeds, scan_tar


def make_tar(entries, fmt=tarfile.PAX_FORMAT) -> bytes:
    """entries: (name, bytes | None for a directory | str for a symlink target, mode, mtime)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data, mode, mtime in entries:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = mode, mtime
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def whole(blob: bytes):
    return lambda off, n: blob[off : off + n]


LONG = "deep/" * 30 + "tokenizer.json"  # 164 chars: a pax or GNU long name


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_members_are_ranges_of_the_blob_in_every_tar_dialect(fmt):
    files = [
        ("config.json", b'{"a": 1}', 0o644, 1_700_000_000),
        ("1_Pooling/config.json", b"x" * 1000, 0o600, 1_700_000_001),
        ("empty.txt", b"", 0o644, 0),
    ]
    if fmt != tarfile.USTAR_FORMAT:
        files.append((LONG, b"long" * 300, 0o755, 5))
    entries = [("1_Pooling", None, 0o755, 0), ("link", "config.json", 0o777, 0), *files]
    blob = make_tar(entries, fmt)
    members = scan_tar(whole(blob), len(blob), "layer 0")
    assert [m.path for m in members] == [f[0] for f in files]
    for m, (_name, data, mode, mtime) in zip(members, files, strict=True):
        assert blob[m.offset : m.offset + m.size] == data
        assert (m.mode, m.mtime_ns) == (mode, mtime * 1_000_000_000)


def test_pax_mtime_keeps_its_fraction():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("a")
        info.size, info.pax_headers = 1, {"mtime": "1700000000.25"}
        tar.addfile(info, io.BytesIO(b"z"))
    blob = buf.getvalue()
    (m,) = scan_tar(whole(blob), len(blob), "l")
    assert m.mtime_ns == 1_700_000_000_250_000_000


def test_missing_bytes_are_asked_for_and_member_data_is_never_read():
    big = b"D" * (3 << 20)
    blob = make_tar([("weights.bin", big, 0o644, 0), ("tail.json", b"{}", 0o644, 0)])
    have: dict[int, bytes] = {}
    asked = []

    def read_at(off, n):
        for start, data in have.items():
            if start <= off and off + n <= start + len(data):
                return data[off - start : off - start + n]
        return None

    for _round in range(10):
        found = scan_tar(read_at, len(blob), "l")
        if not isinstance(found, TarNeeds):
            break
        asked.append(found)
        have[found.offset] = blob[found.offset : found.offset + found.length]
    assert [m.path for m in found] == ["weights.bin", "tail.json"]
    # Two rounds: the first header (with read-ahead), then the header after 3 MiB of data.
    assert len(asked) == 2
    assert asked[1].offset == BLOCK_BYTES + len(big)
    assert sum(a.length for a in asked) < 1 << 20


@pytest.mark.parametrize("name", ["/etc/passwd", "../../x/../../../y", "a/../../b"])
def test_escaping_member_refuses_the_layer(name):
    blob = make_tar([(name, b"boom", 0o644, 0)])
    with pytest.raises(ManifestInvalid, match=r"leaves|absolute"):
        scan_tar(whole(blob), len(blob), "layer 3")


def test_leading_dot_dot_is_stripped_like_docker_does():
    blob = make_tar([("../../config.json", b"{}", 0o644, 0), ("./a/./b", b"1", 0o644, 0)])
    assert [m.path for m in scan_tar(whole(blob), len(blob), "l")] == ["config.json", "a/b"]


def test_repeated_name_is_the_last_one():
    blob = make_tar([("a", b"first", 0o644, 0), ("a", b"second!", 0o644, 0)])
    (m,) = scan_tar(whole(blob), len(blob), "l")
    assert blob[m.offset : m.offset + m.size] == b"second!"


def test_bad_checksum_truncation_and_overlong_members_are_refused():
    blob = bytearray(make_tar([("a", b"12345", 0o644, 0)]))
    blob[0] ^= 1
    with pytest.raises(ManifestInvalid, match="checksum"):
        scan_tar(whole(bytes(blob)), len(blob), "l")
    good = make_tar([("a", b"x" * 2000, 0o644, 0)])
    cut = good[: BLOCK_BYTES + 100]  # the blob ends inside the member's data
    with pytest.raises(ManifestInvalid, match="runs past"):
        scan_tar(whole(cut), len(cut), "l")
    with pytest.raises(ManifestInvalid, match="inside a header"):
        scan_tar(whole(good[:300]), 300, "l")


def test_member_count_is_bounded(monkeypatch):
    import modelfs.formats.tarindex as t

    monkeypatch.setattr(t, "MAX_TAR_MEMBERS", 3)
    blob = make_tar([(f"f{i}", b"1", 0o644, 0) for i in range(5)])
    with pytest.raises(ManifestInvalid, match="over 3 tar members"):
        scan_tar(whole(blob), len(blob), "l")
