"""What DDP worker processes need to know before anything heavy is imported (the CLI checks it first).

Lightning starts the other DDP processes by re-running the command line (``spinenet train ...``); those
workers reload the config that rank 0 resolved instead of composing their own, so they share its run folder.
"""

from __future__ import annotations

import os

# Set by rank 0 to the resolved config it saved in the run folder; inherited by the workers Lightning starts.
DDP_CONFIG_ENV = "SPINENET_DDP_CONFIG"


def is_ddp_worker() -> bool:
    """True in the processes Lightning starts beside rank 0 (they inherit rank 0's run folder)."""
    return int(os.environ.get("LOCAL_RANK", 0)) > 0 or int(os.environ.get("NODE_RANK", 0)) > 0
