"""A randomized workload over a real mount, and the invariants it checks throughout and at the end.

``tests/mount/test_workload.py`` runs it for under a minute, ``bench/soak.py`` for as long as
asked. Several models of different sizes share a cache with a small bound; reader threads read
them whole, at random offsets and through mmap, checking every byte against the source; one
chaos thread meanwhile runs ``modelfs rm`` and ``modelfs pull`` on the same cache and, at times
drawn in advance, kills the daemon (kill -9) and mounts again. Every choice comes from one seed
(``Plan.seed``): a failure names it, and ``MODELFS_SOAK_SEED=<seed>`` replays the same choices
(the threads' timing aside).

Invariants:
- a read returns the source's bytes, or an errno the README's table documents and this workload
  can cause: ENOENT (an open racing a removal), ENOTCONN or ECONNABORTED (across a kill), EIO
  (only when the plan injects network faults);
- throughout: the daemon answers ``modelfs status``, none of its loops failed (``failures``),
  its log has no ERROR and no traceback;
- after quiescence (readers stopped, every handle closed, nothing in flight): the cache is within
  its bound, or every model left is pinned (pulled); ``ls``, ``du`` and ``status`` agree (the same
  models, the same bytes); the daemon's descriptors and threads are back near an idle daemon's.
"""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from modelfs.blobs.blobcache import BlobCache
from support.mount import Mount, run_modelfs

README = Path(__file__).resolve().parents[2] / "README.md"
SEED_ENV = "MODELFS_SOAK_SEED"
READ_SIZES = (1, 4096, 65536, 1 << 20, 4 << 20)
STATUS_EVERY_SECONDS = 3.0
QUIET_SECONDS = 90.0  # quiescence: nothing in flight, the cache settled, idle threads gone
# An idle daemon after a workload may keep a few pooled registry connections (at most 4 per
# host) and a thread or two more than at the start (trio's idle worker threads expire in 10 s).
SPARE_FDS = 6
SPARE_THREADS = 2
# How much ``du`` (models' blobs, complete or partial) and ``status`` (every file in blobs/ and
# .modelfs/partial/) may differ: partial-state files, and du's one-decimal MB.
AGREE_BYTES = 1_000_000


def seed_from_env(default: int | None = None) -> int:
    text = os.environ.get(SEED_ENV)
    if text:
        return int(text)
    return default if default is not None else random.SystemRandom().randrange(1 << 31)


def documented_errnos(readme: Path = README) -> set[int]:
    """The errnos in the README's table of errors in the mount."""
    text = readme.read_text()
    section = text[text.index("**Errors in the mount**") :]
    table = section[section.index("| errno |") : section.index("\n\n", section.index("| errno |"))]
    first_cells = [row.split("|")[1] for row in table.splitlines() if row.startswith("|")]
    return {getattr(errno, n) for n in re.findall(r"`(E[A-Z]+)`", "\n".join(first_cells))}


@dataclass(frozen=True)
class Model:
    name: str  # HOST/library/model:tag, as pulled and removed
    path: Path  # model.gguf in the mount
    data: bytes


@dataclass(frozen=True)
class Plan:
    seed: int
    seconds: float
    readers: int = 4
    kills: int = 1
    action_seconds: float = 4.0  # mean pause between chaos actions (rm, pull)
    faults: bool = False  # the registry sits behind a proxy injecting faults: EIO may happen

    def replay(self, test: str) -> str:
        return f"seed {self.seed}: replay with {SEED_ENV}={self.seed} {test}"


@dataclass
class Report:
    reads: Counter[str] = field(default_factory=Counter)  # mode → reads checked right
    read_bytes: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # errno name → reads that got it
    actions: Counter[str] = field(default_factory=Counter)  # rm, pull, kill
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    final_status: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class Violation(AssertionError):
    pass


class _Gate:
    """Shared by mmap readers, taken alone by a kill: a page fault on a dead mount is SIGBUS."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._sharing = 0
        self._alone = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._alone)
            self._sharing += 1
        try:
            yield
        finally:
            with self._cond:
                self._sharing -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._alone)
            self._alone = True
            self._cond.wait_for(lambda: self._sharing == 0)
        try:
            yield
        finally:
            with self._cond:
                self._alone = False
                self._cond.notify_all()


def daemon_figures(pid: int) -> dict[str, int]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return {
        "rss": int(fields["VmRSS"].split()[0]) * 1024,
        "threads": int(fields["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


def status_of(mount: Mount) -> dict:
    return json.loads(run_modelfs("status", str(mount.mountpoint), "--json", env=mount.env).stdout)


class Workload:
    def __init__(self, mount: Mount, models: list[Model], plan: Plan, test: str) -> None:
        self.mount = mount
        self.models = models
        self.plan = plan
        self.test = test
        self.cache = BlobCache(mount.cache)
        self.report = Report()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._gate = _Gate()
        self._epoch = 0  # kills so far
        self._dead = False
        self._violations: list[str] = []
        self._log_seen = 0
        documented = documented_errnos()
        self.allowed = {errno.ENOENT} | ({errno.EIO} if plan.faults else set())
        self.across_kill = {errno.ENOTCONN, errno.ECONNABORTED}
        missing = (self.allowed | self.across_kill) - documented
        assert not missing, f"the README does not document {sorted(missing)}"

    # -- running ----------------------------------------------------------------------------

    def run(self) -> Report:
        rng = random.Random(self.plan.seed)
        reader_seeds = [rng.randrange(1 << 31) for _ in range(self.plan.readers)]
        chaos_seed = rng.randrange(1 << 31)
        kill_at = sorted(rng.uniform(0.2, 0.8) * self.plan.seconds for _ in range(self.plan.kills))
        idle = self._figures()
        assert idle is not None
        start = time.monotonic()
        self.report.samples.append((0.0, idle))
        threads = [
            threading.Thread(target=self._guard, args=(self._reader, s), name=f"reader-{i}")
            for i, s in enumerate(reader_seeds)
        ]
        threads.append(
            threading.Thread(
                target=self._guard, args=(self._chaos, chaos_seed, start, kill_at), name="chaos"
            )
        )
        for t in threads:
            t.start()
        try:
            next_status = start
            while time.monotonic() - start < self.plan.seconds and not self._violations:
                time.sleep(0.2)
                if time.monotonic() >= next_status:
                    next_status += STATUS_EVERY_SECONDS
                    self._check_running(start)
        finally:
            self._stop.set()
            for t in threads:
                t.join(600)
        self._raise_violations()
        self._quiesce(idle)
        self._raise_violations()
        return self.report

    def _guard(self, fn, *args) -> None:
        try:
            fn(*args)
        except Violation as e:
            self._violate(str(e))
        except BaseException as e:  # a bug in the workload itself must not hang the run
            self._violate(f"{threading.current_thread().name} crashed: {type(e).__name__}: {e}")

    def _violate(self, what: str) -> None:
        with self._lock:
            self._violations.append(what)
        self._stop.set()

    def _raise_violations(self) -> None:
        if self._violations:
            raise Violation(
                "\n".join([*self._violations[:5], self.plan.replay(self.test)])
                + f"\n(reads so far: {dict(self.report.reads)}, errors: {dict(self.report.errors)}"
                f", actions: {dict(self.report.actions)})"
            )

    # -- readers ----------------------------------------------------------------------------

    def _reader(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self._stop.is_set():
            model = rng.choice(self.models)
            mode = rng.choice(("sequential", "random", "mmap"))
            epoch = self._epoch
            try:
                if mode == "mmap":
                    with self._gate.shared():
                        n = self._read_mmap(model, rng)
                elif mode == "random":
                    n = self._read_random(model, rng)
                else:
                    n = self._read_sequential(model)
            except OSError as e:
                self._judge(e, model, mode, epoch)
                continue
            with self._lock:
                self.report.reads[mode] += 1
                self.report.read_bytes += n

    def _check(self, model: Model, mode: str, offset: int, got: bytes | memoryview) -> None:
        want = model.data[offset : offset + len(got)]
        if got != want:
            raise Violation(
                f"{mode} read of {model.name} at {offset} returned {len(got)} bytes that are not "
                "the model's"
            )

    def _read_sequential(self, model: Model) -> int:
        offset = 0
        with open(model.path, "rb", buffering=0) as f:
            while piece := f.read(1 << 20):
                self._check(model, "sequential", offset, piece)
                offset += len(piece)
        if offset != len(model.data):
            raise Violation(f"sequential read of {model.name} ended at {offset} bytes")
        return offset

    def _read_random(self, model: Model, rng: random.Random) -> int:
        total = 0
        fd = os.open(model.path, os.O_RDONLY)
        try:
            for _ in range(rng.randint(1, 16)):
                offset = rng.randrange(len(model.data))
                got = os.pread(fd, rng.choice(READ_SIZES), offset)
                self._check(model, "random", offset, got)
                total += len(got)
        finally:
            os.close(fd)
        return total

    def _read_mmap(self, model: Model, rng: random.Random) -> int:
        total = 0
        fd = os.open(model.path, os.O_RDONLY)
        try:
            with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as mm:
                if len(mm) != len(model.data):
                    raise Violation(f"mmap of {model.name} is {len(mm)} bytes")
                for _ in range(rng.randint(1, 16)):
                    offset = rng.randrange(len(mm))
                    got = mm[offset : offset + rng.choice(READ_SIZES)]
                    self._check(model, "mmap", offset, got)
                    total += len(got)
        finally:
            os.close(fd)
        return total

    def _judge(self, e: OSError, model: Model, mode: str, epoch: int) -> None:
        allowed = self.allowed
        if self._dead or epoch != self._epoch:
            allowed = allowed | self.across_kill
        name = errno.errorcode.get(e.errno or 0, str(e.errno))
        if e.errno not in allowed:
            raise Violation(f"{mode} read of {model.name} failed with {name}: {e}")
        with self._lock:
            self.report.errors[name] += 1

    # -- the chaos thread ---------------------------------------------------------------------

    def _chaos(self, seed: int, start: float, kill_at: list[float]) -> None:
        rng = random.Random(seed)
        while True:
            pause = rng.uniform(0.5, 1.5) * self.plan.action_seconds
            if kill_at and time.monotonic() + pause >= start + kill_at[0]:
                pause = max(0.0, start + kill_at.pop(0) - time.monotonic())
                action = "kill"
            else:
                action = rng.choice(("rm", "rm", "pull"))
            if self._stop.wait(pause):
                return
            model = rng.choice(self.models)
            if action == "kill":
                self._kill_and_mount()
            elif action == "rm":
                r = run_modelfs("rm", model.name, "--cache", str(self.mount.cache), check=False)
                if r.returncode != 0 and "is not in the cache" not in r.stderr:
                    raise Violation(f"modelfs rm {model.name} failed: {r.stderr.strip()}")
            else:
                r = run_modelfs("pull", model.name, "--cache", str(self.mount.cache), check=False)
                if r.returncode != 0:
                    raise Violation(f"modelfs pull {model.name} failed: {r.stderr.strip()}")
            with self._lock:
                self.report.actions[action] += 1

    def _kill_and_mount(self) -> None:
        with self._gate.alone():
            self._dead = True
            self._epoch += 1
            try:
                self.mount.kill()
                self.mount.start()
            finally:
                self._dead = False

    # -- invariants -----------------------------------------------------------------------------

    def _figures(self) -> dict[str, int] | None:
        pid = self.mount.pid()
        if pid is None:
            return None
        try:
            return daemon_figures(pid)
        except (OSError, KeyError):
            return None

    def _check_log(self) -> None:
        text = self.mount.log_text()
        new, self._log_seen = text[self._log_seen :], len(text)
        for i, line in enumerate(lines := new.splitlines()):
            if " ERROR " in line or "Traceback (most recent call last)" in line:
                raise Violation("the daemon logged:\n" + "\n".join(lines[i : i + 12]))
            if " WARNING " in line:
                self.report.warnings.append(line)

    def _check_running(self, start: float) -> None:
        try:
            self._check_log()
            epoch = self._epoch
            try:
                s = status_of(self.mount)
            except AssertionError:
                if self._dead or epoch != self._epoch:
                    return  # killed meanwhile
                raise Violation("modelfs status got no answer from a live daemon") from None
            if s.get("failures"):
                raise Violation(f"a loop of the daemon failed: {s['failures']}")
            figures = self._figures()
            if figures is not None:
                self.report.samples.append((time.monotonic() - start, figures))
        except Violation as e:
            self._violate(str(e))

    def _lazy_left(self) -> list[str]:
        """Models eviction may still remove (fetched through the mount), with a manifest."""
        present = {m.name.key for m in self.cache.iter_models()}
        return [str(n) for _t, n in self.cache.lazy_models() if n.key in present]

    def _quiesce(self, idle: dict[str, int]) -> None:
        def wait(what: str, predicate) -> object:
            deadline = time.monotonic() + QUIET_SECONDS
            while time.monotonic() < deadline:
                value = predicate()
                if value:
                    return value
                time.sleep(0.2)
            raise Violation(f"after the workload, timed out waiting for {what}")

        try:
            s = wait(
                "nothing in flight", lambda: (s := status_of(self.mount))["in_flight"] == [] and s
            )
            bound = s["cache"]["max_bytes"]

            def settled() -> dict | None:
                s = status_of(self.mount)
                return s if s["cache"]["bytes"] <= bound or not self._lazy_left() else None

            try:
                s = wait(f"the cache to be within its bound of {bound} bytes", settled)
            except Violation:
                s = status_of(self.mount)
                raise Violation(
                    f"the cache holds {s['cache']['bytes']} bytes against its bound of {bound}, "
                    f"with models eviction may remove: {self._lazy_left()} "
                    f"(evictions: {s['evictions']})"
                ) from None
            if s.get("failures"):
                raise Violation(f"a loop of the daemon failed: {s['failures']}")
            self.report.final_status = s
            self._check_agreement(s)
            try:
                wait(
                    "the daemon's descriptors and threads back near an idle daemon's",
                    lambda: (
                        (f := self._figures()) is not None
                        and f["fds"] <= idle["fds"] + SPARE_FDS
                        and f["threads"] <= idle["threads"] + SPARE_THREADS
                    ),
                )
            except Violation:
                raise Violation(self._leak_report(idle)) from None
            figures = self._figures()
            assert figures is not None
            self.report.samples.append((self.plan.seconds, figures))
            self._check_log()
        except Violation as e:
            self._violate(str(e))

    def _leak_report(self, idle: dict[str, int]) -> str:
        pid = self.mount.pid()
        fds, threads = [], []
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    fds.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            for t in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    threads.append(Path(f"/proc/{pid}/task/{t}/comm").read_text().strip())
        return (
            f"the daemon holds {self._figures()} against an idle daemon's {idle} (at most "
            f"{SPARE_FDS} descriptors and {SPARE_THREADS} threads more) after "
            f"{QUIET_SECONDS:.0f} s quiet: descriptors {sorted(fds)}, threads {sorted(threads)}"
        )

    def _check_agreement(self, s: dict) -> None:
        cache = str(self.mount.cache)
        ls = run_modelfs("ls", "--cache", cache).stdout.splitlines()[1:]
        du = run_modelfs("du", "--cache", cache).stdout.splitlines()[1:]
        ls_names = sorted(line.split()[0] for line in ls)
        du_names = sorted(line.split()[0] for line in du[:-1])
        cached = sorted(m.name.display_shortest() for m in self.cache.iter_models())
        if not ls_names == du_names == cached:
            raise Violation(f"ls {ls_names}, du {du_names} and the cache {cached} disagree")
        total = _human(du[-1].split()[1:3]) if du and du[-1].startswith("total") else 0
        if abs(total - s["cache"]["bytes"]) > AGREE_BYTES:
            raise Violation(
                f"du says the models take {total} bytes, status says the cache holds "
                f"{s['cache']['bytes']}: {sorted(os.listdir(self.cache.blobs_dir))}, "
                f"partial: {sorted(os.listdir(self.cache.partial_dir))}"
            )


def _human(parts: list[str]) -> int:
    """``["41.9", "MB"]`` (commands.progress.human_bytes) → bytes."""
    number, unit = parts
    scale = {"B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4}[unit]
    return int(float(number) * scale)
