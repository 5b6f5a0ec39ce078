"""Logger fixes the configs use: CSV appends safely, W&B keeps one run per run folder."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment


class CSVLogger(_LightningCSVLogger):
    """Lightning's CSV logger, but it keeps the columns of an existing ``metrics.csv``.

    Lightning's writer only knows the columns logged by this process; when a resumed run (or a test after
    a spawned fit) appends to the file, rewriting it with fewer columns fails. Loading the old header first
    makes appending safe.
    """

    @property
    def experiment(self):
        writer = super().experiment
        if writer is not None and not getattr(writer, "_spinenet_header_loaded", False):
            if os.path.isfile(writer.metrics_file_path):
                with open(writer.metrics_file_path, newline="") as file:
                    header = next(csv.reader(file), [])
                writer.metrics_keys = sorted(set(writer.metrics_keys) | set(header))
            writer._spinenet_header_loaded = True
        return writer


# The W&B run id of a run folder, so that resuming the folder (ckpt_path=last) resumes the same W&B run.
WANDB_ID_FILE = "wandb_id.txt"


def wandb_run_name(run_dir: str | os.PathLike) -> str:
    """The W&B run name of a run folder: its own name; a sweep trial's folder is ``<sweep folder>/<trial>``."""
    run_dir = Path(run_dir)
    return f"{run_dir.parent.name}/{run_dir.name}" if run_dir.name.isdigit() else run_dir.name


class WandbLogger(_LightningWandbLogger):
    """Lightning's W&B logger with one W&B run per run folder.

    - The run is named like its folder, and its id is kept in ``<run folder>/wandb_id.txt``: resuming the
      folder resumes the same W&B run.
    - A W&B run still open in this process (the previous trial of an in-process sweep) is finished first:
      Lightning would otherwise log the new trial into it.
    - ``finish(failed)`` closes the run and marks it failed or finished (``spinenet.tasks.train`` calls it).
    """

    def __init__(self, save_dir: str, name: str | None = None, id: str | None = None, **kwargs):
        self._id_file = Path(save_dir) / WANDB_ID_FILE
        if id is None and rank_zero_only.rank == 0:
            if self._id_file.is_file():
                id = self._id_file.read_text().strip() or None
            if id is None:
                from wandb.sdk.lib.runid import generate_id

                id = generate_id()
                self._id_file.parent.mkdir(parents=True, exist_ok=True)
                self._id_file.write_text(id + "\n")
        kwargs.setdefault("resume", "allow")
        super().__init__(save_dir=save_dir, name=name or wandb_run_name(save_dir), id=id, **kwargs)

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is None:
            import wandb

            if wandb.run is not None and wandb.run.id != self._wandb_init.get("id"):
                wandb.run.finish()  # another run folder's run: never log into it
        return super().experiment

    @property
    def run_dir(self) -> str | None:
        """The offline run's folder (what ``wandb sync`` takes), once the run exists."""
        if self._experiment is None or not getattr(self._experiment, "dir", None):
            return None
        return str(Path(self._experiment.dir).parent)

    @rank_zero_only
    def finish(self, failed: bool = False) -> None:
        if self._experiment is not None:
            self._experiment.finish(exit_code=1 if failed else 0)
            self._experiment = None
