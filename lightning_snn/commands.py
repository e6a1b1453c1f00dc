"""The ``export``, ``report`` and ``timesteps`` subcommands of the command line.

``python -m lightning_snn export --config C --ckpt_path X --out model.nir`` writes the trained
network as a NIR graph; ``python -m lightning_snn report --config C --ckpt_path X`` runs it on a
data split and reports spikes, synaptic operations and energy per layer
(:class:`lightning_snn.energy.SpikeEnergyReport`); ``python -m lightning_snn timesteps --config C
--ckpt_path X --T 1 2 4 8`` evaluates the checkpoint at each T (:mod:`lightning_snn.timesteps`).
They are methods of the trainer so that
``LightningCLI`` builds the model, data and trainer from the same config as ``fit``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import pytorch_lightning as pl
import torch

from lightning_snn.batch_limits import BatchLimit, BatchLimitNote


def load_weights(model: pl.LightningModule, ckpt_path: str) -> None:
    """Load a Lightning checkpoint's weights into ``model`` (strict: a mismatch names the keys).

    The file is read as :func:`lightning_snn.checkpoints.read_checkpoint` reads it: tensors,
    builtins and the project's configuration dataclasses only (``weights_only=True``), so a file
    that carries any other pickled object is refused with a :class:`CheckpointError` naming it,
    never unpickled."""
    from lightning_snn.checkpoints import read_checkpoint

    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"--ckpt_path {ckpt_path!r} does not exist or is not a file")
    ckpt = read_checkpoint(path)
    if "state_dict" not in ckpt:
        raise ValueError(f"{ckpt_path!r} is not a Lightning checkpoint (no 'state_dict')")
    try:
        missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"checkpoint {ckpt_path!r} does not fit the configured model: {e}") from None
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {ckpt_path!r} does not fit the configured model: missing keys {missing[:5]}, "
            f"unexpected keys {unexpected[:5]} (is --config the one it was trained with?)")


def space_separated_list(args: list[str], option: str = "--verify") -> list[str]:
    """``--verify a b c`` -> ``--verify [a,b,c]`` (the values up to the next option), the form the
    parser reads; other arguments unchanged."""
    out, i = [], 0
    while i < len(args):
        out.append(args[i])
        if args[i] == option:
            j = i + 1
            while j < len(args) and not args[j].startswith("-"):
                j += 1
            if j - i > 2 or (j - i == 2 and not args[i + 1].startswith("[")):
                out.append("[" + ",".join(args[i + 1:j]) + "]")
                i = j
                continue
        i += 1
    return out


def _test_images(datamodule: Optional[pl.LightningDataModule], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test images and labels of the data module, as training normalises them."""
    if datamodule is None:
        raise ValueError("--verify needs the data (--data.* options) to run test images")
    datamodule.setup("test")
    xs, ys, got = [], [], 0
    for x, y in datamodule.test_dataloader():
        xs.append(x)
        ys.append(y)
        got += len(x)
        if got >= n:
            break
    return torch.cat(xs)[:n], torch.cat(ys)[:n]


def _as_list(callbacks: Any) -> list[Any]:
    return [] if callbacks is None else list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]


class SNNTrainer(pl.Trainer):
    """``pl.Trainer`` with the ``export``, ``report`` and ``timesteps`` commands; ``limit_*_batches`` typed
    ``int | float`` (an integer is a number of batches, ``1.0`` all of them, as in Lightning's Python
    API, ``batch_limits``) and the limits applied written in the run log."""

    def __init__(self, limit_train_batches: BatchLimit = None, limit_val_batches: BatchLimit = None,
                 limit_test_batches: BatchLimit = None, limit_predict_batches: BatchLimit = None,
                 **kwargs: Any) -> None:
        limits = {"train": limit_train_batches, "val": limit_val_batches, "test": limit_test_batches,
                  "predict": limit_predict_batches}
        if any(v is not None for v in limits.values()):
            kwargs["callbacks"] = [*_as_list(kwargs.get("callbacks")), BatchLimitNote(limits)]
        super().__init__(limit_train_batches=limit_train_batches, limit_val_batches=limit_val_batches,
                         limit_test_batches=limit_test_batches, limit_predict_batches=limit_predict_batches,
                         **kwargs)

    def export(self, model: pl.LightningModule, datamodule: Optional[pl.LightningDataModule] = None,
               ckpt_path: Optional[str] = None, out: str = "model.nir", dt: float = 1e-4,
               verify: Optional[list[Literal["snntorch", "norse", "spikingjelly"]]] = None,
               verify_images: int = 256) -> Path:
        """Write the network of a checkpoint as a NIR graph, optionally run it in other libraries.

        Args:
            model: the configured ``SNNModule``.
            datamodule: the data: its normalisation goes into the file's metadata, and ``--verify``
                runs its test images.
            ckpt_path: Lightning checkpoint with the trained weights.
            out: the ``.nir`` file to write (written atomically).
            dt: time step (s) that maps the leak to NIR's LIF time constant, tau = dt / (1 - leak).
            verify: libraries that load the written file (``lightning_snn.nir.readers``) and run
                ``verify_images`` test images next to ours: spikes and predictions equal, accuracy.
            verify_images: number of test images ``--verify`` runs.
        """
        from lightning_snn.nir.export import check_strategy, to_nir, write_nir

        if not ckpt_path:
            raise ValueError("export needs --ckpt_path (the trained checkpoint)")
        if verify and verify_images < 1:
            raise ValueError(f"--verify_images {verify_images}: need at least 1 image")
        check_strategy(model.strategy)
        load_weights(model, ckpt_path)
        spec = getattr(datamodule, "spec", None)
        norm = (spec.mean, spec.std) if spec is not None and spec.events is None else None
        graph = to_nir(model.net, tuple(model.hparams.input_shape), dt, normalization=norm)
        path = write_nir(graph, out)
        print(f"wrote {path}: " + ", ".join(f"{k} ({type(v).__name__})" for k, v in graph.nodes.items()))
        if verify:
            from lightning_snn.nir.verify import verify as run_verify

            x, y = _test_images(datamodule, verify_images)
            print(run_verify(graph, x, y, int(model.hparams.T), verify, net=model.net))
        return path

    def report(self, model: pl.LightningModule, datamodule: Optional[pl.LightningDataModule] = None,
               ckpt_path: Optional[str] = None, split: Literal["test", "val"] = "test",
               out_dir: Optional[str] = None, convention: Literal["project", "neurobench"] = "project",
               ) -> dict[str, float]:
        """Spikes, synaptic operations and energy per layer on a data split.

        Args:
            model: the configured ``SNNModule``.
            datamodule: the configured data.
            ckpt_path: Lightning checkpoint with the trained weights.
            split: ``test`` or ``val``.
            out_dir: where ``spike_report.csv`` / ``.png`` go (default: the logger's directory).
            convention: how operations are counted: ``project`` (the input layer's MACs once per
                static image, spikes x fan-out ACs through average pools) or ``neurobench``
                (NeuroBench 2.3.0's: the input layer's MACs at every step, MACs on pooled rates).
        """
        from lightning_snn.energy import SpikeEnergyReport

        if not ckpt_path:
            raise ValueError("report needs --ckpt_path (the trained checkpoint)")
        load_weights(model, ckpt_path)
        cb = SpikeEnergyReport(out_dir=out_dir, stages=("test" if split == "test" else "validate",),
                               convention=convention)
        self.callbacks.append(cb)
        try:
            (self.test if split == "test" else self.validate)(model, datamodule=datamodule)
        finally:
            self.callbacks.remove(cb)
        return cb.totals

    def timesteps(self, model: pl.LightningModule, datamodule: Optional[pl.LightningDataModule] = None,
                  ckpt_path: Optional[str] = None, T: Optional[list[int]] = None,
                  split: Literal["test", "val"] = "test", out_dir: Optional[str] = None) -> list:
        """Accuracy, spikes, SOPs and energy per sample of a checkpoint evaluated at each of ``T``.

        Args:
            model: the configured ``SNNModule`` (its settings must be the checkpoint's, but for T).
            datamodule: the configured data.
            ckpt_path: Lightning checkpoint with the trained weights.
            T: the time steps to run it for (the forward simulation length for IDE / SPIDE, the
                number of frames for event data), e.g. ``--T 1 2 4 6 8 12``.
            split: ``test`` or ``val``.
            out_dir: where ``timesteps.csv`` / ``.png`` (and each T's spike report under
                ``T<k>/``) go (default: the logger's directory).
        """
        from lightning_snn.timesteps import check_time_steps, run_curve

        steps = check_time_steps(T)
        if not ckpt_path:
            raise ValueError("timesteps needs --ckpt_path (the trained checkpoint)")
        load_weights(model, ckpt_path)
        trained = torch.load(ckpt_path, map_location="cpu", weights_only=False).get("hyper_parameters", {})
        training_T = int(trained.get("T", model.hparams.T))
        out = Path(out_dir or self.log_dir or ".")
        return run_curve(self, model, datamodule, f"checkpoint {Path(ckpt_path).name}", steps, training_T, out, split)
