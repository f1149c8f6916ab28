"""`run_dir/log.jsonl`: the training run's records, one JSON object per line, kept across resumes.

On a local disk each record is appended with one `write` on a file opened for appending, so a record is on disk as
soon as it is logged and a long run costs the same per line as a short one. Object stores have no append: there
the records are kept in memory (with those of earlier attempts, read at start) and the whole object is written
again by `flush()`, which the loop calls at checkpoints and at the end, and which also runs by itself when a record
arrives `flush_seconds` or more after the last write. Either way readers see whole lines only.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from atlas_gan.storage import LocalStorage, Storage, StorageError, join_url

LOG_NAME = "log.jsonl"


class RunLog:
    def __init__(self, store: Storage, run_dir: str, flush_seconds: float = 60.0) -> None:
        self.store, self.url, self.flush_seconds = store, join_url(run_dir, LOG_NAME), flush_seconds
        self.appends = isinstance(store, LocalStorage)
        self._lines: list[str] = []  # object stores: every line of the object
        self._dirty = False
        self._last_flush = time.monotonic()
        if not self.appends and store.exists(self.url):
            self._lines = [line for line in store.read_bytes(self.url).decode().splitlines() if line.strip()]

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record)
        if self.appends:
            self._append(line)
            return
        self._lines.append(line)
        self._dirty = True
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def _append(self, line: str) -> None:
        try:
            os.makedirs(os.path.dirname(self.url) or ".", exist_ok=True)
            fd = os.open(self.url, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, (line + "\n").encode())
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageError(f"{self.url}: cannot append: {exc.strerror or exc}") from exc

    def flush(self) -> None:
        """Object stores: write the whole log now if anything is unwritten (local logs are always written)."""
        if self._dirty:
            self.store.write_bytes(self.url, ("\n".join(self._lines) + "\n").encode())
            self._dirty = False
        self._last_flush = time.monotonic()
