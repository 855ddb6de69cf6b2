"""A mirror is trusted for nothing but bytes, and not for those either once they fail a check:
bytes from a mirror that do not match are fetched again from the origin, and the mirror is set
aside for a while, instead of making the model unreadable or blaming its chunk index."""

from __future__ import annotations

import os

from mount.test_mount import TAG_DIR, model_records
from mount.test_pull_through_mirror import mirror_config
from support.mount import sha256_path
from support.proxy import Proxy

from modelfs.formats.chunks import CHUNK_BYTES


def test_a_mirror_serving_wrong_bytes_is_set_aside_and_the_origin_serves_them(
    registry, proxy, mount_factory, smollm2_pushed, source, model_hex, tmp_path
) -> None:
    liar = Proxy(registry.host).start()  # a mirror of the same registry that flips one byte
    try:
        bad = 5 * CHUNK_BYTES + 1234
        liar.set_faults([{"path": model_hex, "flip_at": bad}])
        config = mirror_config(tmp_path, proxy.host, liar.host)
        m = mount_factory(env={**os.environ, "MODELFS_CONFIG": str(config)})
        m.expect_log(r"chunk 5 .* does not match the chunk index")
        m.expect_log(r"chunk 5 of blob \w+ of \S+ did not match; mirror \S+ may have sent them")
        model = m.mountpoint / proxy.host / TAG_DIR / "model.gguf"
        with open(model, "rb") as f:
            assert os.pread(f.fileno(), 4096, bad - 100) == source[bad - 100 : bad + 3996]
        # The chunk came again from the origin, checked, not from the mirror a second time.
        spans = [r.span for r in model_records(proxy, model_hex) if r.span is not None]
        assert any(a <= bad < b for a, b in spans), "the origin did not serve the bad chunk"
        assert sha256_path(model) == model_hex
        assert "not trusting" not in m.log_text(), "the chunk index was blamed for the mirror"
    finally:
        liar.stop()
