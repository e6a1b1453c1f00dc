"""A training loader whose position Lightning can checkpoint and restore in the middle of an epoch.

Lightning saves the ``state_dict`` of every train loader that has one into each checkpoint and calls
``load_state_dict`` when a fit resumes (``fit --ckpt_path last``, or SLURM's ``hpc_ckpt_N.ckpt``
after a requeue). With this loader a run resumed from a mid-epoch checkpoint sees exactly the
batches the uninterrupted run would have seen next, so it ends at the same weights.

The order of samples in epoch ``e`` is a pure function of ``(seed, e)``: the sampler is a
``DistributedSampler`` (seeded permutation per epoch, ``rank::world`` split), which Lightning keeps
as it is under DDP instead of replacing it. With one process it is the whole permutation, and the
``2k``-th global batch of size ``2B`` on one process holds the same samples as the ``k``-th
batches of size ``B`` on two ranks together.

The position is the number of batches the loop has *completed*. A checkpoint taken between steps
(``ModelCheckpoint``, epoch ends) is therefore exact; one taken by a signal handler in the middle
of a step (SLURM's ``hpc_ckpt_N.ckpt`` on USR1) holds the weights of that moment and resumes by
repeating the interrupted batch, as Lightning's own loop counters do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` that can start an epoch part-way through (to resume mid-epoch).

    ``world`` and ``rank`` are given explicitly (1 and 0 without a process group).
    """

    def __init__(self, dataset: Dataset, world: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed)
        self._skip: tuple[int, int] | None = None  # (epoch, samples of this rank to skip)

    def resume_at(self, epoch: int, samples: int) -> None:
        """Set ``epoch`` now and start its next pass after its first ``samples`` indices (this rank's).

        Lightning sets the epoch only after it has created the resumed run's first iterator.
        """
        self.set_epoch(epoch)
        self._skip = (epoch, samples)

    def pending_skip(self) -> int:
        """Indices the next pass skips (a resumed epoch's first part), 0 otherwise."""
        return self._skip[1] if self._skip is not None and self._skip[0] == self.epoch else 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip = 0
        if self._skip is not None:
            if self._skip[0] == self.epoch:  # a resumed epoch; a later epoch starts from 0
                skip = self._skip[1]
            self._skip = None
        return iter(indices[skip:])


class ResumableDataLoader(DataLoader):
    """DataLoader over an :class:`EpochSampler` that Lightning treats as resumable.

    The position itself is saved and restored by the data module (``VisionDataModule.state_dict``):
    Lightning restores a data module before it first builds the train loader, whereas a loader's own
    ``load_state_dict`` comes too late whenever the model reads ``trainer.estimated_stepping_batches``
    in ``configure_optimizers`` (which builds the loader early). ``state_dict`` here reports the
    same position for inspection; ``load_state_dict`` has nothing left to do.

    Args:
        position: returns ``(epoch, batches)``: the epoch the next training batch belongs to and
            how many of its batches the training loop has completed (from the trainer's loop
            counters, not from batches drawn here: Lightning prefetches one batch ahead).
        *args, **kwargs: ``DataLoader`` arguments.
    """

    def __init__(self, *args: Any, position: Callable[[], tuple[int, int]] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.position = position

    def state_dict(self) -> dict[str, int]:
        epoch, batches = self.position() if self.position is not None else (0, 0)
        return {"epoch": epoch, "batches": batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """No-op: the data module has positioned the sampler already (see the class docstring)."""
