"""This process's environment kept as it was around code that writes to it behind its caller's back."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def environment_restored() -> Iterator[None]:
    """`os.environ` on exit equals `os.environ` on entry: variables the body added are removed, changed ones reset.

    Dask's Nanny writes its workers' variables (OMP_NUM_THREADS=1, MKL_NUM_THREADS=1, MALLOC_TRIM_THRESHOLD_, ...)
    into its *parent's* environment when it starts them; every subprocess started later (a torchrun training run)
    would inherit them and run single-threaded.
    """
    saved = dict(os.environ)
    try:
        yield
    finally:
        for name in set(os.environ) - set(saved):
            del os.environ[name]
        for name, value in saved.items():
            if os.environ.get(name) != value:
                os.environ[name] = value
