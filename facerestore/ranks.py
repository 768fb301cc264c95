"""Which process of a torchrun launch speaks for all, read from the environment torchrun sets.

Without torch: the weights cache (a waiting line) and the CLI (an error line) ask it before any
process group exists, and importing torch.distributed for that would cost seconds.
"""

from __future__ import annotations

import os


def main_rank() -> bool:
    """True without torchrun and in its rank 0 (RANK, else LOCAL_RANK): the process that speaks for all.

    Every rank checks the same options, meets the same error and waits for the same download;
    printing that once per rank would only repeat it. A value that is not a number counts as main,
    so the error about it is seen.
    """
    value = os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))
    try:
        return int(value) == 0
    except ValueError:
        return True
