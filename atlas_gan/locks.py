"""One writer at a time per dataset output: a file lock on a local folder, a renewed lease object on S3.

Local: `flock` on `<output>/.atlas-ingest.lock`; the kernel releases it when the holder exits or crashes, and a
holder removes the file when it is done.

S3: the lock object `<output>/.atlas-ingest.lock` is created with a conditional PUT (If-None-Match: *), so only one
run can create it, and renewed by its holder every quarter lease with a PUT conditional on its ETag. A waiter that
sees the same ETag for a whole lease, timed on its own clock (clocks need not agree), takes it over with a PUT
conditional on that ETag: a crashed holder blocks others for one lease at most. A holder that fails to renew (taken
over, or S3 unreachable for a lease) is told by `Lease.check()` before it writes anything that must not race.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from atlas_gan.config import StorageConfig
from atlas_gan.storage import S3Storage, StorageError, is_s3, join_url

LOCK_NAME = ".atlas-ingest.lock"
REPORT_EVERY_SECONDS = 60.0  # a waiting run repeats who it waits for at this interval
_ABANDONED: set[tuple[str, str]] = set()  # (lock URL, ETag) of leases this process released but could not delete


class LockTimeout(RuntimeError):
    """Another run held the lock for longer than this run was allowed to wait."""


class LockLost(RuntimeError):
    """This run's S3 lease was taken over or could not be renewed: it must not write the manifest."""


def holder_record(purpose: str, lease_seconds: float) -> dict[str, Any]:
    """Who holds the lock, shown to the runs that wait for it."""
    return {
        "purpose": purpose,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "lease_seconds": lease_seconds,
    }


def describe_holder(raw: bytes) -> str:
    try:
        holder = json.loads(raw)
        return f"{holder['purpose']} on {holder['host']} (pid {holder['pid']}) since {holder['since']}"
    except (ValueError, KeyError, TypeError):
        return "another run"


class Lease:
    """Held for the body of `exclusive_output`; `check()` raises LockLost if the lock is no longer this run's."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.lost: str | None = None

    def check(self) -> None:
        if self.lost is not None:
            raise LockLost(f"{self.url}: {self.lost}; nothing more was written, rerun the ingest")


class _Waiting:
    """Deadline and 'waiting for …' messages shared by both lock kinds."""

    def __init__(self, url: str, wait_minutes: float | None, on_wait: Callable[[str], None]) -> None:
        self.url, self.on_wait = url, on_wait
        self.started = time.monotonic()
        self.deadline = None if wait_minutes is None else self.started + 60 * wait_minutes
        self.reported_at: float | None = None

    def blocked(self, holder: str) -> None:
        now = time.monotonic()
        if self.deadline is not None and now >= self.deadline:
            raise LockTimeout(
                f"{self.url}: held by {holder}; gave up after {(now - self.started) / 60:.1f} min "
                "(ingest.lock_wait_minutes)"
            )
        if self.reported_at is None or now - self.reported_at >= REPORT_EVERY_SECONDS:
            waited = f" (waited {now - self.started:.0f} s)" if self.reported_at is not None else ""
            self.on_wait(f"{self.url}: waiting for another ingest into this output to finish: {holder}{waited}")
            self.reported_at = now


@contextlib.contextmanager
def exclusive_output(
    output: str,
    settings: StorageConfig | None = None,
    *,
    purpose: str,
    wait_minutes: float | None = None,
    lease_seconds: float = 120.0,
    on_wait: Callable[[str], None] = print,
) -> Iterator[Lease]:
    """Hold the output's lock for the body; wait for another holder (saying so through `on_wait`) up to
    `wait_minutes` (None: no limit)."""
    url = join_url(output, LOCK_NAME)
    waiting = _Waiting(url, wait_minutes, on_wait)
    record = holder_record(purpose, lease_seconds)
    if is_s3(output):
        with _s3_lock(S3Storage(settings), url, record, lease_seconds, waiting) as lease:
            yield lease
    else:
        with _local_lock(Path(url), record, waiting) as lease:
            yield lease


@contextlib.contextmanager
def _local_lock(path: Path, record: dict[str, Any], waiting: _Waiting) -> Iterator[Lease]:
    created_folder = not path.parent.exists()
    fd = _lock_local_file(path, waiting)
    try:
        os.pwrite(fd, json.dumps(record).encode(), 0)
        yield Lease(str(path))
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # still holding it: a run that opened this file meanwhile sees it gone and reopens
        os.close(fd)  # releases the flock
        if created_folder:  # a run that wrote nothing leaves nothing behind
            with contextlib.suppress(OSError):
                path.parent.rmdir()


def _lock_local_file(path: Path, waiting: _Waiting) -> int:
    """An open descriptor on `path` that holds its exclusive flock, and is still the file at `path`."""
    import fcntl

    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:
            continue  # the folder's creator removed it, empty, in between
        except OSError as exc:
            raise StorageError(f"{path}: cannot open the ingest lock: {exc.strerror or exc}") from exc
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    waiting.blocked(describe_holder(os.pread(fd, 4096, 0)))
                    time.sleep(0.5)
            if os.fstat(fd).st_ino == _inode(path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the previous holder removed this file on release: lock the current one


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


class _Renewal(threading.Thread):
    """Renews the S3 lease every quarter lease until stopped; records why if it cannot."""

    def __init__(self, store: S3Storage, lease: Lease, body: bytes, etag: str, lease_seconds: float) -> None:
        super().__init__(name="atlas-ingest-lease", daemon=True)
        self.store, self.lease, self.body, self.etag = store, lease, body, etag
        self.lease_seconds = lease_seconds
        self.stopped = threading.Event()

    def run(self) -> None:
        renewed_at = time.monotonic()
        while not self.stopped.wait(self.lease_seconds / 4):
            try:
                etag = self.store.put_if(self.lease.url, self.body, etag=self.etag)
            except StorageError as exc:
                if time.monotonic() - renewed_at > self.lease_seconds:
                    self.lease.lost = f"the lease could not be renewed for {self.lease_seconds:.0f} s ({exc})"
                    return
                continue
            if etag is None:
                self.lease.lost = "another run took the lock over (this run's lease had expired)"
                return
            self.etag, renewed_at = etag, time.monotonic()


@contextlib.contextmanager
def _s3_lock(
    store: S3Storage, url: str, record: dict[str, Any], lease_seconds: float, waiting: _Waiting
) -> Iterator[Lease]:
    body = json.dumps(record).encode()
    poll = min(2.0, lease_seconds / 4)
    seen: tuple[str, float] | None = None  # the holder's ETag and when this run first saw it
    while (etag := store.put_if(url, body)) is None:
        current = store.read_with_etag(url)
        if current is None:
            continue  # released in between: try to create it again
        raw, current_etag = current
        if (url, current_etag) in _ABANDONED:  # this process's own lease, left behind when S3 went away
            etag = store.put_if(url, body, etag=current_etag)
            if etag is not None:
                break
            continue
        if seen is None or seen[0] != current_etag:
            seen = (current_etag, time.monotonic())
        elif time.monotonic() - seen[1] > _lease_of(raw, lease_seconds):
            etag = store.put_if(url, body, etag=current_etag)  # the holder stopped renewing: take it over
            if etag is not None:
                waiting.on_wait(f"{url}: took over the expired lock of {describe_holder(raw)}")
                break
            continue
        waiting.blocked(describe_holder(raw))
        time.sleep(poll)
    if store.put_if(url, body, etag='"atlas-never-matches"') is not None:  # the server ignored the condition
        store.delete(url)
        raise StorageError(
            f"{url}: the S3 server at {store.endpoint_url} ignores conditional writes (If-Match / If-None-Match), "
            "so overlapping ingests could not be kept apart there; use one that supports them (AWS S3, MinIO, "
            "SeaweedFS)"
        )
    lease = Lease(url)
    renewal = _Renewal(store, lease, body, etag, lease_seconds)
    renewal.start()
    try:
        yield lease
    finally:
        renewal.stopped.set()
        renewal.join()
        if lease.lost is None:
            try:
                store.delete_if(url, renewal.etag)
            except StorageError:  # S3 gone: others wait for the lease to expire; this process need not
                _ABANDONED.add((url, renewal.etag))


def _lease_of(raw: bytes, default: float) -> float:
    """The holder's own lease length (it renews at a quarter of it), with a little slack for a slow request."""
    try:
        return float(json.loads(raw)["lease_seconds"]) + 1.0
    except (ValueError, KeyError, TypeError):
        return default
