"""Checkpoints that can always be resumed from: atomic writes, verification on load, a fallback to
the newest intact file, and a checkpoint at the next step boundary on SIGTERM / SIGUSR1.

Two ``ModelCheckpoint`` callbacks share one folder (the CLI builds both from ``--checkpoint.*``):

- the *best* one (``monitor: val/acc``) saves only at the end of a validation, so a best file is
  always scored by the validation it names;
- :class:`ResumeCheckpoint` (``monitor=None``) writes ``last.ckpt`` at every epoch end and every
  ``every_n_train_steps`` steps, independently of validation, and on a signal.

A checkpoint written between steps (``on_train_batch_end``) holds the state after a whole
optimiser step and the data position (``VisionDataModule.state_dict``): a run resumed from it
continues bit-identically. That is also where a signal is acted on, never in the middle of a step
(a mid-step save would count the interrupted batch twice in BatchNorm's ``num_batches_tracked``).
"""

from __future__ import annotations

import math
import os
import pickle
import signal
import tempfile
import warnings
import zipfile
from pathlib import Path
from subprocess import call
from types import FrameType
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from lightning_snn.atomic import no_space, remove_stale_temps, temp_path


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (unreadable, missing, made for another model or other
    data) or cannot be written (a full disk)."""


VALID_CKPT = "(valid: a complete checkpoint file written by fit, 'last' or 'best')"


def _unusable(path: Any, reason: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} {reason} {VALID_CKPT}")


class TrainingInterrupted(RuntimeError):
    """Training stopped on a signal after saving ``path`` (the CLI exits with ``128 + signum``)."""

    def __init__(self, signum: int, path: str, step: int, requeued: bool = False) -> None:
        self.signum, self.path, self.step, self.requeued = signum, path, step, requeued
        what = "requeued the SLURM job" if requeued else "resume with --ckpt_path last (or this file)"
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}: saved {path}; {what}")


# ----------------------------------------------------------------------------- writing
class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a hidden file beside the target, ``fsync``, then ``os.replace``.

    A full disk or a kill leaves the previous checkpoint intact under the final name (Lightning's
    default writes through a temporary file that may sit on another file system, where the final
    move is a copy that can be cut short). A full disk is one line naming the folder and the file;
    the first write into a folder removes the temporary files of writers that were killed there.
    """

    def __init__(self) -> None:
        super().__init__()
        self._swept: set[Path] = set()

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if "://" in str(path):  # remote file systems: fsspec's own transaction
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.parent not in self._swept:
            remove_stale_temps(target.parent)
            self._swept.add(target.parent)
        tmp = temp_path(target)
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException as e:
            tmp.unlink(missing_ok=True)
            if no_space(e):
                kept = "the previous checkpoint is kept" if target.exists() else "no earlier checkpoint there"
                raise CheckpointError(f"no space left on {target.parent} while writing {target.name}; "
                                      f"{kept} (valid: free space, or another --checkpoint.dirpath)") from e
            raise


def check_writable(folder: str | Path) -> None:
    """Create ``folder`` and write + delete a file in it; a clear error otherwise (before training)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise CheckpointError(f"checkpoint directory {folder} is not writable ({e.strerror or e}) "
                              "(valid: a writable --checkpoint.dirpath / --trainer.default_root_dir)") from e


# ----------------------------------------------------------------------------- reading
def verify_checkpoint(path: str | Path) -> None:
    """Raise :class:`CheckpointError` naming ``path`` unless it is a complete ``torch.save`` archive
    (every member present with a matching CRC). DeepSpeed's checkpoint folders are not checked."""
    path = Path(path)
    if path.is_dir():
        return
    if not path.is_file():
        raise _unusable(path, "does not exist")
    if path.stat().st_size == 0:
        raise _unusable(path, "is empty")
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise _unusable(path, f"is truncated or not a checkpoint file ({e})") from e
    if bad is not None:
        raise _unusable(path, f"is corrupt (member {bad} fails its CRC check)")
    if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
        raise _unusable(path, "is a zip archive but not a torch checkpoint")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's contents (tensors memory-mapped, not read); a clear error naming the file.
    Besides tensors and builtins, the project's own configuration dataclasses may be in its
    hyper-parameters (a module built in Python rather than from a config)."""
    from lightning_snn.loss import LossConfig
    from lightning_snn.neurons import NeuronConfig

    verify_checkpoint(path)
    if Path(path).is_dir():
        return {}
    try:
        with torch.serialization.safe_globals([NeuronConfig, LossConfig]):
            return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _unusable(path, f"cannot be read ({first})") from e


def _candidates(folders: list[Path], exclude: Path) -> list[Path]:
    """``*.ckpt`` files in ``folders``, newest first (hidden temporary files left out)."""
    files = {p.resolve() for d in folders if d.is_dir() for p in d.glob("*.ckpt")
             if not p.name.startswith(".") and p.is_file()}
    files.discard(exclude.resolve())
    return sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)


def is_resume_file(path: str | Path) -> bool:
    """``last*.ckpt`` or SLURM's ``hpc_ckpt_N.ckpt``: files a crashed run resumes from."""
    name = Path(path).name
    return name.startswith("last") or name.startswith("hpc_ckpt_")


def resolve_resume(ckpt_path: str, dirpath: str | None, root_dir: str | None, *,
                   fallback: bool) -> str:
    """The checkpoint file to load for ``--ckpt_path``, verified.

    ``last`` is the newest ``last*.ckpt`` in ``dirpath`` (when set; otherwise Lightning resolves
    it). With ``fallback``, an unreadable ``last``/``hpc_ckpt`` file is replaced, with a warning
    naming both, by the newest intact ``*.ckpt`` in its folder, ``dirpath`` or ``root_dir``.
    """
    if ckpt_path in ("best", "hpc", "registry") or ckpt_path.startswith("registry:"):
        return ckpt_path
    if ckpt_path == "last":
        if not dirpath:
            return ckpt_path
        lasts = sorted(Path(dirpath).glob("last*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
        if not lasts:
            return ckpt_path  # nothing yet: Lightning warns and starts from scratch
        path = lasts[0]
    else:
        path = Path(ckpt_path)
        if not path.exists():
            raise CheckpointError(f"--ckpt_path {ckpt_path} does not exist (valid: a checkpoint file, "
                                  "'last' or 'best')")
    try:
        verify_checkpoint(path)
        return str(path)
    except CheckpointError as bad:
        if not (fallback and is_resume_file(path)):
            raise
        folders = [path.parent] + [Path(d) for d in (dirpath,) if d]
        if root_dir:
            folders.append(Path(root_dir))
        for cand in _candidates(folders, exclude=path):
            try:
                verify_checkpoint(cand)
            except CheckpointError:
                continue
            warnings.warn(f"{bad}; resuming from {cand} instead, the newest intact checkpoint")
            return str(cand)
        raise CheckpointError(f"{bad}; no intact checkpoint to fall back to in "
                              f"{', '.join(map(str, dict.fromkeys(folders)))}") from None


# ----------------------------------------------------------------------------- hyper-parameters
OPTIMISATION_KEYS = ("optimizer", "lr", "momentum", "weight_decay", "nesterov", "scheduler",
                     "milestones", "gamma", "warmup_steps")


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a.b": leaf}``; tuples as lists; private keys (``_instantiator``) left out."""
    if hasattr(value, "items"):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not str(k).startswith("_"):
                out.update(_flatten(v, f"{prefix}{k}."))
        return out or ({prefix[:-1]: {}} if prefix else {})
    if isinstance(value, tuple):
        value = list(value)
    return {prefix[:-1]: value}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def hparam_mismatch(stored: dict[str, Any], requested: dict[str, Any], *,
                    include_optimisation: bool) -> list[tuple[str, Any, Any]]:
    """``(key, stored, requested)`` for every model setting that differs. Keys the checkpoint does
    not store (written by an older version) are not compared. The optimiser's settings only count
    for ``fit`` (resuming restores the optimiser's state, which would silently override them)."""
    a, b = _flatten(stored), _flatten(requested)
    skip = () if include_optimisation else OPTIMISATION_KEYS
    top = {k.split(".")[0] for k in a}
    diff = []
    for key in sorted(set(a) | set(b)):
        if key.split(".")[0] in skip or key.split(".")[0] not in top:
            continue
        if not _same(a.get(key), b.get(key)):
            diff.append((key, a.get(key), b.get(key)))
    return diff


def stored_data_settings(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """The data settings a checkpoint's run was trained with (``VisionDataModule.run_settings``);
    for a checkpoint of an older version, the same keys of the data module's hyper-parameters."""
    for value in ckpt.values():  # the data module's state, stored under its class name
        if isinstance(value, dict) and isinstance(value.get("data"), dict) and "dataset" in value["data"]:
            return value["data"]
    hp = ckpt.get("datamodule_hyper_parameters") or {}
    return {k: hp[k] for k in ("dataset", "val_size", "seed", "batch_size", "augment", "cutout") if k in hp} or None


def check_data_settings(stored: dict[str, Any], requested: dict[str, Any], ckpt: Any, subcommand: str,
                        allow_other_data: bool = False) -> str | None:
    """A resumed ``fit`` must use the checkpoint's data settings (every key); an evaluation its data
    set, unless ``allow_other_data``: then the returned note says what is evaluated on what.
    Raises :class:`CheckpointError` listing the keys that differ."""
    fitting = subcommand == "fit"
    compared = stored if fitting else {k: v for k, v in stored.items() if k == "dataset"}
    diff = hparam_mismatch(compared, requested, include_optimisation=True)
    if not diff:
        return None
    shown = "; ".join(f"data.{k}: checkpoint {a!r}, requested {b!r}" for k, a, b in diff)
    if fitting or not allow_other_data:
        other = "" if fitting else ", or --allow_other_data to evaluate it on other data"
        raise CheckpointError(f"checkpoint {ckpt} was made with other data settings than requested: {shown} "
                              f"(valid: the checkpoint's settings{other})")
    return f"--allow_other_data: {subcommand} of checkpoint {ckpt} on other data than it was trained on: {shown}"


# ----------------------------------------------------------------------------- last / step / signals
class ResumeCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every epoch end and every ``every_n_train_steps`` steps (no metric involved);
    on SIGTERM or SIGUSR1 a checkpoint at the next step boundary, then :class:`TrainingInterrupted`.

    Under SLURM with auto-requeue, the requeue signal (USR1) saves ``hpc_ckpt_N.ckpt`` in the run's
    root folder and runs ``scontrol requeue`` instead (the job script resumes from the newest of
    that and ``last.ckpt``). Under DDP the ranks agree at each step on whether any of them was
    signalled, so they save and stop at the same step.
    """

    def __init__(self, dirpath: str | None = None, every_n_train_steps: int | None = None,
                 every_n_epochs: int | None = None, train_time_interval: Any = None,
                 save_last: bool = True, save_weights_only: bool = False,
                 enable_version_counter: bool = True) -> None:
        # Lightning takes one trigger; the epoch-end save is this class's own (on_train_epoch_end)
        steps_or_time = bool(every_n_train_steps) or train_time_interval is not None
        super().__init__(dirpath=dirpath, monitor=None, save_top_k=0, save_last=True,
                         every_n_train_steps=every_n_train_steps,
                         every_n_epochs=None if steps_or_time else every_n_epochs,
                         train_time_interval=train_time_interval, save_weights_only=save_weights_only,
                         save_on_train_epoch_end=True, enable_version_counter=enable_version_counter)
        self._epoch_every = every_n_epochs or 1
        self._periodic = bool(save_last)
        self._signum = 0
        self._previous: dict[int, Any] = {}
        self._requeue = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(kind="resume", every_n_train_steps=self._every_n_train_steps,
                                        every_n_epochs=self._epoch_every)

    # ------------------------------------------------------------ set-up
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":  # fail now, not after the first epoch; every rank raises the same error
            error = None
            if trainer.is_global_zero:
                try:
                    check_writable(self.dirpath)
                except CheckpointError as e:
                    error = str(e)
            error = trainer.strategy.broadcast(error)
            if error:
                raise CheckpointError(error)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """A resumed run continues the run it resumes: its last file (in this run's folder) is
        overwritten, also when the folder moved or that file was unreadable, never versioned aside."""
        super().load_state_dict(state_dict)
        if self.dirpath:
            name = Path(state_dict.get("last_model_path") or self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION).name
            self.last_model_path = str(Path(self.dirpath) / name)

    # ------------------------------------------------------------ periodic saves
    def _save_last(self, trainer: pl.Trainer) -> None:
        if self._last_global_step_saved != trainer.global_step or not self.last_model_path:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if self._periodic:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        signum = self._signum
        if trainer.world_size > 1:  # the same decision on every rank: max over ranks
            flag = torch.tensor(signum, device=trainer.strategy.root_device)
            signum = int(trainer.strategy.reduce(flag, reduce_op="max"))
        if signum:
            self._stop(trainer, signum)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """After the epoch's validation; unlike ``ModelCheckpoint``, also when no step save happened."""
        if self._periodic and not trainer.fast_dev_run and not trainer.sanity_checking and (
            (trainer.current_epoch + 1) % self._epoch_every == 0
        ):
            self._save_last(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Nothing: this callback does not depend on validation."""

    # ------------------------------------------------------------ signals
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        # after Lightning's own handlers (registered just before): they are replaced for the loop
        env = trainer._accelerator_connector.cluster_environment
        self._requeue = isinstance(env, SLURMEnvironment) and env.auto_requeue
        usr = env.requeue_signal if self._requeue and env.requeue_signal else signal.SIGUSR1
        self._signum = 0
        for sig in {signal.SIGTERM, usr}:
            try:
                self._previous[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread: leave signals to Lightning
                pass

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        rank_zero_info(f"received {signal.Signals(signum).name}: saving a checkpoint at the next step")
        self._signum = self._signum or signum

    def _restore_handlers(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_handlers()
        if self._signum:  # arrived after the last step: the run is complete and saved, still say so
            raise TrainingInterrupted(self._signum, self.last_model_path, trainer.global_step)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()

    def _stop(self, trainer: pl.Trainer, signum: int) -> None:
        requeue = self._requeue and signum != signal.SIGTERM
        if requeue:  # SLURM: hpc_ckpt_N.ckpt, then requeue the job (as Lightning's own handler)
            path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
            for logger in trainer.loggers:
                logger.finalize("finished")
            trainer.save_checkpoint(path)
            if trainer.is_global_zero:
                _requeue_slurm_job()
        else:
            self._save_now(trainer)
            path = self.last_model_path
        self._signum = 0
        raise TrainingInterrupted(signum, path, trainer.global_step, requeued=requeue)

    def _save_now(self, trainer: pl.Trainer) -> None:
        periodic, self.save_last = self.save_last, True
        try:
            self._save_last(trainer)
        finally:
            self.save_last = periodic


def _requeue_slurm_job() -> None:
    array_job = os.getenv("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]
    result = call(["scontrol", "requeue", job])
    if result == 0:
        rank_zero_info(f"requeued SLURM job {job}")
    else:
        warnings.warn(f"requeueing SLURM job {job} failed (scontrol exit {result})")


def best_and_resume_callbacks(args: dict[str, Any]) -> list[ModelCheckpoint]:
    """The two callbacks from ``--checkpoint.*`` (``ModelCheckpoint``'s arguments).

    With a ``monitor``: a best-by-metric ``ModelCheckpoint`` saved only at validation end (no step,
    time or last saves), then a :class:`ResumeCheckpoint` with the step / time / epoch triggers and
    ``save_last``. Without a monitor only the latter.
    """
    resume = ResumeCheckpoint(
        dirpath=args.get("dirpath"), every_n_train_steps=args.get("every_n_train_steps"),
        every_n_epochs=args.get("every_n_epochs") or 1, train_time_interval=args.get("train_time_interval"),
        save_last=args.get("save_last") is not False, save_weights_only=bool(args.get("save_weights_only")),
        enable_version_counter=args.get("enable_version_counter", True),
    )
    if args.get("monitor") is None or args.get("save_top_k") == 0:
        return [resume]
    best_args = {k: v for k, v in args.items()
                 if k not in ("save_last", "every_n_train_steps", "train_time_interval",
                              "save_on_train_epoch_end", "save_on_exception")}
    best = ModelCheckpoint(**best_args, save_last=False, every_n_train_steps=None, train_time_interval=None,
                           save_on_train_epoch_end=False)
    return [best, resume]
