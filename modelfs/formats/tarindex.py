"""The members of an uncompressed tar blob as byte ranges of it, read from its headers alone.

A tar layer (DMR's ``vllm.config.tar`` and ``dir.tar``, ModelPack ``….tar``) is served
without extraction: each regular member is the blob range ``[offset, offset + size)``. This
module reads ustar, pax (``x``/``g`` records: ``path``, ``size``, ``mtime``) and GNU
(``L`` long names, base-256 sizes) headers and returns the members; it never reads member
data. It is pure: bytes come through ``read_at(offset, length)``, which returns ``None``
when the caller has not fetched them yet, and the scan then says which range it needs
(``TarNeeds``); the caller fetches it and scans again.

Bounded: at most ``MAX_TAR_MEMBERS`` members and ``MAX_EXTENDED_HEADER_BYTES`` of pax or
GNU long-name data per member. Member paths are cleaned like file paths
(``relpath.clean_path``): one that escapes the directory refuses the whole layer.
Directories, links and devices are not files and are left out; a name repeated in one
tar is the last one (what extracting it would leave).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from modelfs.errors import ManifestInvalid
from modelfs.formats.relpath import clean_path

BLOCK_BYTES = 512
MAX_TAR_MEMBERS = 10_000
MAX_EXTENDED_HEADER_BYTES = 1 << 20
# When a header is missing, ask for this much from it on: small members' headers come along.
READ_AHEAD_BYTES = 256 << 10

ReadAt = Callable[[int, int], bytes | None]

_REGULAR = (b"0", b"\0", b"7")  # 7: contiguous file, a regular file to every reader
# Links, devices, directories and FIFOs have no data whatever their size field says; any
# other type (GNU sparse, multivolume, vendor types) is skipped over its data.
_NO_DATA = (b"1", b"2", b"3", b"4", b"5", b"6")


@dataclass(frozen=True)
class TarMember:
    path: str
    offset: int  # of the member's data in the blob
    size: int
    mode: int
    mtime_ns: int


@dataclass(frozen=True)
class TarNeeds:
    """Bytes ``[offset, offset + length)`` of the blob are needed to go on."""

    offset: int
    length: int


def _octal(field: bytes, what: str, where: str) -> int:
    if field and field[0] & 0x80:  # GNU base-256: big-endian, high bit set
        if field[0] & 0x40:
            raise ManifestInvalid(f"{where}: negative {what} in a tar header")
        value = field[0] & 0x3F
        for b in field[1:]:
            value = (value << 8) | b
        return value
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise ManifestInvalid(
            f"{where}: the {what} field of a tar header is not a number"
        ) from None


def _checksum_ok(block: bytes) -> bool:
    stored = block[148:156].split(b"\0", 1)[0].strip(b" ")
    try:
        want = int(stored, 8)
    except ValueError:
        return False
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    signed = sum(b - 256 if b > 127 else b for b in block[:148] + block[156:]) + 8 * 32
    return want in (unsigned, signed)


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _pax(data: bytes, where: str) -> dict[str, str]:
    """pax extended header records: ``"<len> <key>=<value>\\n"``."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        if data[pos:].strip(b"\0") == b"":
            break
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise ManifestInvalid(f"{where}: a pax record has no length") from None
        record = data[space + 1 : pos + length]
        if length <= 0 or pos + length > len(data) or not record.endswith(b"\n"):
            raise ManifestInvalid(f"{where}: a pax record runs past its header")
        key, eq, value = record[:-1].partition(b"=")
        if not eq:
            raise ManifestInvalid(f"{where}: a pax record has no '='")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _pax_int(value: str, what: str, where: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ManifestInvalid(f"{where}: pax {what} {value[:40]!r} is not a number") from None
    if n < 0:
        raise ManifestInvalid(f"{where}: pax {what} is negative")
    return n


def _pax_mtime_ns(value: str) -> int | None:
    whole, _dot, frac = value.partition(".")
    try:
        return int(whole) * 1_000_000_000 + int((frac + "000000000")[:9] or 0)
    except ValueError:
        return None


def _padded(size: int) -> int:
    return -(-size // BLOCK_BYTES) * BLOCK_BYTES


def scan_tar(read_at: ReadAt, blob_size: int, where: str) -> list[TarMember] | TarNeeds:
    """The regular-file members of the tar blob of ``blob_size`` bytes, or the range needed.

    ``where`` names the layer in errors (``ManifestInvalid``)."""
    members: dict[str, TarMember] = {}
    pos = 0
    count = 0
    pending: dict[str, str] = {}  # pax or GNU long-name overrides for the next member
    global_pax: dict[str, str] = {}

    def need(offset: int, length: int) -> TarNeeds:
        end = min(blob_size, max(offset + length, offset + READ_AHEAD_BYTES))
        return TarNeeds(offset, end - offset)

    while True:
        if pos + BLOCK_BYTES > blob_size:
            if pos == blob_size:  # no end-of-archive blocks: tolerated, as GNU tar does
                break
            raise ManifestInvalid(f"{where}: the tar ends inside a header")
        block = read_at(pos, BLOCK_BYTES)
        if block is None:
            return need(pos, BLOCK_BYTES)
        if block == bytes(BLOCK_BYTES):
            break  # end of archive
        if not _checksum_ok(block):
            raise ManifestInvalid(f"{where}: a tar header at byte {pos} has a bad checksum")
        count += 1
        if count > MAX_TAR_MEMBERS * 3:
            raise ManifestInvalid(f"{where}: over {MAX_TAR_MEMBERS} tar members")
        typeflag = block[156:157]
        size = _octal(block[124:136], "size", where)
        data_at = pos + BLOCK_BYTES
        if typeflag in (b"x", b"g", b"L"):
            if size > MAX_EXTENDED_HEADER_BYTES:
                raise ManifestInvalid(f"{where}: a {size}-byte extended tar header")
            if data_at + size > blob_size:
                raise ManifestInvalid(f"{where}: an extended tar header runs past the blob")
            data = read_at(data_at, size) if size else b""
            if data is None:
                return need(data_at, size)
            if typeflag == b"L":
                pending["path"] = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            elif typeflag == b"x":
                pending.update(_pax(data, where))
            else:
                global_pax.update(_pax(data, where))
            pos = data_at + _padded(size)
            continue
        fields = {**global_pax, **pending}
        pending = {}
        name = _text(block[0:100])
        if block[257:263] == b"ustar\0" and (prefix := _text(block[345:500])):
            name = prefix + "/" + name
        name = fields.get("path", name)
        if "size" in fields:
            size = _pax_int(fields["size"], "size", where)
        mtime_ns = _octal(block[136:148], "mtime", where) * 1_000_000_000
        if "mtime" in fields and (pax_mtime := _pax_mtime_ns(fields["mtime"])) is not None:
            mtime_ns = pax_mtime
        mode = _octal(block[100:108], "mode", where) & 0o777
        has_data = typeflag not in _NO_DATA
        if has_data and data_at + size > blob_size:
            raise ManifestInvalid(f"{where}: tar member {name[:80]!r} runs past the blob")
        if typeflag in _REGULAR:
            path = clean_path(name, f"{where} member")
            if len(members) >= MAX_TAR_MEMBERS and path not in members:
                raise ManifestInvalid(f"{where}: over {MAX_TAR_MEMBERS} tar members")
            members.pop(path, None)  # a repeated name: the last one, at the end of the order
            members[path] = TarMember(path, data_at, size, mode, mtime_ns)
        pos = data_at + (_padded(size) if has_data else 0)
    return list(members.values())
