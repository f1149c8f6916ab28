"""Where a rank's training data stands, and how a resumed run starts its data where the checkpoint left it.

A rank's data consumers (one per DataLoader worker, see `data.TileStream`) each draw a stream that depends only on
(seed, epoch, consumer), and the DataLoader hands out their batches in turn. So the batches a run would have drawn
after a checkpoint are fixed by, per consumer, the (epoch, index in that epoch) of the first sample of the last
batch it sent and how many of that batch's views (`group` training batches) were taken, and by which consumer sent
last. The resumed run starts every consumer after what it sent (a half-taken batch: at that batch's start, its
taken views dropped, so that later batches keep their boundaries), and rotates the workers so that the first batch
comes from the consumer whose turn it was. Together with the restored RNG states it continues on the trajectory of
an uninterrupted run, bit for bit.

This holds when the rank count, loader workers, batch size and grouping are the run's own; otherwise
`plan_resume` returns None and the data restarts at the start of the newest epoch the run drew from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class DataPosition:
    """One rank's place in its data; `consumers`: consumer -> [epoch, index of the first sample of its last batch,
    views of that batch taken]; `last`: the consumer whose batch came last (None before the first); `origin`: the
    epoch where consumers that have sent nothing yet start."""

    batch_size: int
    group: int
    workers: int
    consumers: dict[int, list[int]] = field(default_factory=dict)
    last: int | None = None
    origin: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for a checkpoint (read back with `torch.load(weights_only=True)`)."""
        return asdict(self)  # deep copies: the saved lists never alias the live position

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> DataPosition:
        consumers = {int(consumer): [int(v) for v in place] for consumer, place in saved["consumers"].items()}
        sizes = int(saved["batch_size"]), int(saved["group"]), int(saved["workers"])
        return cls(*sizes, consumers, saved["last"], int(saved.get("origin", 0)))


@dataclass(frozen=True)
class DataResume:
    """How to start a rank's data again: `starts` (consumer -> (epoch, samples of its stream from that epoch's start
    to pass over); the others start at `position.origin`) and `rotation` for the stream, `discard` (consumer -> views
    of its first batch to drop) and the position to carry on for the loader."""

    starts: dict[int, tuple[int, int]]
    rotation: int
    discard: dict[int, int]
    position: DataPosition


def plan_resume(saved: DataPosition, rank: int, batch_size: int, group: int, workers: int) -> DataResume | None:
    """The plan for `rank` to continue from `saved` (its own position), or None when the loader's shape changed."""
    if (saved.batch_size, saved.group, saved.workers) != (batch_size, group, workers):
        return None
    first_consumer = rank * workers
    starts, discard = {}, {}
    for consumer, (epoch, index, taken) in saved.consumers.items():
        if taken >= group:  # its last batch is spent: start after it
            starts[consumer] = (epoch, index + group * batch_size)
        else:  # half-taken: start at its beginning and drop what was taken
            starts[consumer] = (epoch, index)
            discard[consumer] = taken
    rotation = 0
    if saved.last is not None:
        worker = saved.last - first_consumer
        if not 0 <= worker < workers:
            return None
        rotation = worker if saved.last in discard else (worker + 1) % workers
    return DataResume(starts, rotation, discard, saved)
