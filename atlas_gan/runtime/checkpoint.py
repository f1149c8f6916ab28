"""Training checkpoints: everything a run needs to continue exactly, written atomically, read safely.

A checkpoint holds only tensors and plain Python values, so it loads with `torch.load(weights_only=True)`: the
recipe's networks, their EMAs and optimizers by name, the recipe's own state, step and image counters, the data
epoch, every rank's RNG states, the model spec and the resolved config. Files are
`run_dir/checkpoints/step-00001000.pt`; the newest one is where a run resumes.

Format versions: 2 (named networks: `networks`, `ema`, `optimizers`, `recipe_state`, `recipe_ranks`, `generator`)
since the training recipes; 1 (`G`, `D`, `G_ema`, `opt_g`, `opt_d`, `augment`, `augment_ranks`, `path_length`)
before. `load_checkpoint` returns every file in version 2's layout.
"""

from __future__ import annotations

import io
import pickle
import random
import re
from typing import Any

import numpy as np
import torch

from atlas_gan.storage import Storage, StorageError, join_url

CHECKPOINT_FORMAT = "atlas-gan/checkpoint"
CHECKPOINT_VERSION = 2
_NAME = re.compile(r"step-(\d{8})\.pt$")


def checkpoint_url(run_dir: str, step: int) -> str:
    return join_url(run_dir, "checkpoints", f"step-{step:08d}.pt")


def checkpoint_step(url: str) -> int | None:
    """The step of a checkpoint URL (`.../step-00000200.pt` -> 200), or None when it is not named like one."""
    match = _NAME.search(url)
    return int(match.group(1)) if match else None


def list_checkpoints(store: Storage, run_dir: str) -> list[tuple[int, str]]:
    """(step, url) of every checkpoint in the run, oldest first."""
    steps = ((checkpoint_step(info.url), info.url) for info in store.list(join_url(run_dir, "checkpoints")))
    return sorted((step, url) for step, url in steps if step is not None)


def rng_state() -> dict[str, Any]:
    """This process's random number generator states, as tensors and plain values."""
    numpy_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(numpy_state[1].astype(np.int64)), "pos": int(numpy_state[2])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    keys = state["numpy"]["key"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy"]["pos"], 0, 0.0))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_checkpoint(store: Storage, url: str, payload: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}, buffer)
    store.write_bytes(url, buffer.getvalue())


def load_checkpoint(store: Storage, url: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read with `weights_only=True`: a checkpoint cannot run code when it is loaded."""
    try:
        payload = torch.load(io.BytesIO(store.read_bytes(url)), map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:  # corrupt, or arbitrary objects
        raise StorageError(f"{url}: not a readable atlas-gan checkpoint ({exc})") from exc
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise StorageError(f"{url}: not an atlas-gan checkpoint (format {payload.get('format')!r})")
    version = payload.get("version", 1)
    if version > CHECKPOINT_VERSION:
        raise StorageError(
            f"{url}: checkpoint format version {version} is newer than this atlas-gan reads ({CHECKPOINT_VERSION}); "
            "upgrade atlas-gan"
        )
    return upgrade_checkpoint(payload) if version < CHECKPOINT_VERSION else payload


def upgrade_checkpoint(payload: dict[str, Any]) -> dict[str, Any]:
    """A version 1 checkpoint (one G and D, flat keys, written before the training recipes) in version 2's layout.
    Version 1 was written only by the adversarial families, whose recipe state was ADA's and the path length's."""
    state = dict(payload)
    state["networks"] = {"G": state.pop("G"), "D": state.pop("D")}
    state["ema"] = {"G": state.pop("G_ema")}
    state["optimizers"] = {"G": state.pop("opt_g"), "D": state.pop("opt_d")}
    augment, augment_ranks = state.pop("augment", None), state.pop("augment_ranks", None)
    state["recipe_state"] = {"augment": augment, "path_length": state.pop("path_length", None)}
    state["recipe_ranks"] = [{"augment": own} for own in augment_ranks] if augment_ranks else None
    state["recipe"] = "adversarial"
    state["generator"] = {"network": "G", "signature": "latent"}
    state["version"] = CHECKPOINT_VERSION
    return state


def prune_checkpoints(store: Storage, run_dir: str, keep: int, also_keep: int | None = None) -> None:
    """Delete all but the newest `keep` checkpoints and the one of step `also_keep` (the best scored)."""
    for step, url in list_checkpoints(store, run_dir)[:-keep]:
        if step != also_keep:
            store.delete(url)
