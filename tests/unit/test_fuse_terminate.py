"""``fuse_ops.terminate`` ends the FUSE loop while it runs and does nothing once it returned:
pyfuse3's ``terminate`` writes into the session, which ``close`` frees (the end of a session
seen after that, or a late signal, crashed the daemon in libfuse3 with a NULL session)."""

from __future__ import annotations

import pytest
import trio

from modelfs.fs import fuse_ops


async def test_terminate_reaches_pyfuse3_only_while_the_loop_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    running = trio.Event()
    ended = trio.Event()

    async def main(min_tasks: int, max_tasks: int) -> None:
        running.set()
        await ended.wait()

    monkeypatch.setattr(fuse_ops.pyfuse3, "main", main)
    monkeypatch.setattr(fuse_ops.pyfuse3, "terminate", lambda: calls.append("terminate"))
    assert not fuse_ops.serving()
    fuse_ops.terminate()  # before the loop: nothing to end
    assert calls == []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fuse_ops.serve, 4)
        await running.wait()
        assert fuse_ops.serving()
        fuse_ops.terminate()
        assert calls == ["terminate"]
        ended.set()
    assert not fuse_ops.serving()
    fuse_ops.terminate()  # the session may be freed by now: never touched
    assert calls == ["terminate"]


async def test_the_loop_failing_is_not_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main(min_tasks: int, max_tasks: int) -> None:
        raise OSError(5, "fuse_session_receive_buf failed")

    monkeypatch.setattr(fuse_ops.pyfuse3, "main", main)
    with pytest.raises(OSError):
        await fuse_ops.serve(4)
    assert not fuse_ops.serving()
