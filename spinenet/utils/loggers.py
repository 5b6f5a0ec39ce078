"""Logger fixes the configs use."""

from __future__ import annotations

import csv
import os

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger


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
