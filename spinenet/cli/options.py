"""Options that several commands share."""

from __future__ import annotations

import argparse


def add_wandb_arguments(parser: argparse.ArgumentParser) -> None:
    """``--wandb-project`` and ``--wandb-group`` (for :mod:`spinenet.utils.wandb_results`)."""
    group = parser.add_argument_group("Weights & Biases")
    group.add_argument("--wandb-project", default=None, metavar="PROJECT",
                       help="also log the results to this W&B project (offline unless WANDB_MODE=online)")
    group.add_argument("--wandb-group", default=None, help="W&B group, e.g. the sweep's (default: none)")
