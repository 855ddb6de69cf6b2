"""What a GGUF header says about running its model: the facts ``modelfs show`` prints.

Architecture, parameter count, quantization, context length, embedding size,
block count, tensor count, whether a chat template is there, and an estimate of
the memory a run takes: the weights (the tensor data, which an engine maps
whole) plus the KV cache at a context length. The KV cache is sized as
llama.cpp sizes its default one: for every layer, ``n_ctx`` cells of keys and
values of ``head_count_kv × key_length`` (and ``× value_length``) elements in
f16. Models without attention heads in their header (recurrent ones) get no KV
figure rather than a wrong one. Compute buffers are not estimated.

The same facts are the mount's ``user.modelfs.gguf.*`` xattrs (``xattrs``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from modelfs.formats.gguf import GGUFArray, GGUFInfo, GGUFSkippedString

KV_CACHE_ELEMENT_BYTES = 2  # llama.cpp's default cache type, f16
XATTR_PREFIX = "user.modelfs.gguf."


def _int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _per_layer(value: object, layers: int) -> list[int] | None:
    """A per-layer count: one number for every layer, or an array of one per layer."""
    if (n := _int(value)) is not None:
        return [n] * layers
    if isinstance(value, GGUFArray) and value.values is not None and value.count == layers:
        items = [_int(v) for v in value.values]
        if all(i is not None for i in items):
            return items  # type: ignore[return-value]
    return None


@dataclass(frozen=True)
class ModelFacts:
    architecture: str | None
    name: str | None
    parameter_count: int
    quantization: str | None
    context_length: int | None
    embedding_length: int | None
    block_count: int | None
    head_count: int | None
    head_count_kv: int | None
    tensor_count: int
    chat_template: bool
    weights_bytes: int  # the tensor data: the file less its header
    kv_bytes_per_token: int | None  # None when the header gives no attention shape

    def kv_cache_bytes(self, context: int) -> int | None:
        if self.kv_bytes_per_token is None:
            return None
        return self.kv_bytes_per_token * context

    def memory_bytes(self, context: int) -> int | None:
        """Weights plus the KV cache at ``context`` tokens."""
        kv = self.kv_cache_bytes(context)
        return None if kv is None else self.weights_bytes + kv

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def xattrs(self) -> dict[str, bytes]:
        """``user.modelfs.gguf.<fact>``: every fact the header gives, as text."""
        out: dict[str, bytes] = {}
        for key, value in self.as_dict().items():
            if value is None:
                continue
            text = ("yes" if value else "no") if isinstance(value, bool) else str(value)
            out[XATTR_PREFIX + key] = text.encode()
        if (ctx := self.context_length) is not None and (mem := self.memory_bytes(ctx)) is not None:
            out[XATTR_PREFIX + "memory_bytes"] = str(mem).encode()
        return out


def model_facts(info: GGUFInfo, file_bytes: int) -> ModelFacts:
    """The facts of the model whose GGUF header is ``info`` and file is ``file_bytes`` long."""
    meta = info.metadata
    arch = info.architecture
    prefix = f"{arch}." if arch else "\0"  # no architecture: no per-architecture keys

    def arch_int(key: str) -> int | None:
        return _int(meta.get(prefix + key))

    blocks = arch_int("block_count")
    embedding = arch_int("embedding_length")
    heads_raw = meta.get(prefix + "attention.head_count")
    heads_kv_raw = meta.get(prefix + "attention.head_count_kv", heads_raw)
    kv_per_token = None
    heads = heads_kv = None
    if blocks:
        per_layer_heads = _per_layer(heads_raw, blocks)
        per_layer_kv = _per_layer(heads_kv_raw, blocks)
        if per_layer_heads and per_layer_kv:
            heads, heads_kv = max(per_layer_heads), max(per_layer_kv)
            key_length = arch_int("attention.key_length")
            value_length = arch_int("attention.value_length")
            if key_length is None and embedding and heads:
                key_length = embedding // heads
            if value_length is None:
                value_length = key_length
            if key_length and value_length:
                kv_per_token = (
                    sum(per_layer_kv) * (key_length + value_length) * KV_CACHE_ELEMENT_BYTES
                )
    name = meta.get("general.name")
    return ModelFacts(
        architecture=arch,
        name=name if isinstance(name, str) else None,
        parameter_count=info.parameter_count,
        quantization=info.file_type,
        context_length=arch_int("context_length"),
        embedding_length=embedding,
        block_count=blocks,
        head_count=heads,
        head_count_kv=heads_kv,
        tensor_count=len(info.tensors),
        chat_template=isinstance(meta.get("tokenizer.chat_template"), str | GGUFSkippedString),
        weights_bytes=max(0, file_bytes - info.header_bytes),
        kv_bytes_per_token=kv_per_token,
    )


# Every name ``ModelFacts.xattrs`` can give (listed without reading the header), and whether the
# header's bytes were checked, which the mount adds.
XATTR_HEADER_CHECKED = XATTR_PREFIX + "header_checked"
XATTR_NAMES = (
    *(XATTR_PREFIX + f.name for f in fields(ModelFacts)),
    XATTR_PREFIX + "memory_bytes",
    XATTR_HEADER_CHECKED,
)
