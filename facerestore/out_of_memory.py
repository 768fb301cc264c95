"""Out of memory while restoring a batch of faces: fewer faces at a time, then one clear line.

A GPU that could not hold --batch-size faces raised torch's OutOfMemoryError inside the batch loop:
`restore` reported it as an "internal error ... report it" for that photo and again for every photo
after it, and `evaluate` failed every batch of the method. Now the batch that did not fit is split
in halves and retried (the allocator's cache emptied first), the smaller size is kept for the rest
of the run, and the user is told once. Only a single face that does not fit is an error, one line
with what to do. The outputs do not change: every method draws its noise per face, in face order,
and the generator is put back to where it was before the attempt that failed.

Ordinary CPU runs rarely get here (Linux overcommits memory, and the kernel's OOM killer ends the
process without a word); an allocation larger than the machine can ever give is refused at once,
and is handled alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from facerestore.errors import FaceRestoreError

T = TypeVar("T")
R = TypeVar("R")

# torch.OutOfMemoryError (CUDA, and since 2.5 also XPU); the MPS backend ("MPS backend out of memory")
# and the CPU allocator ("DefaultCPUAllocator: can't allocate memory") raise a plain RuntimeError
_OTHER_MESSAGES = ("out of memory", "can't allocate memory")


class OutOfMemory(FaceRestoreError):
    """Not even one face (or one training step) fits in the memory of its device."""


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(words in str(exc) for words in _OTHER_MESSAGES)


def torch_reason(exc: BaseException) -> str:
    """torch's own account, cut to what it allocated and what was free (its advice about the
    allocator's configuration and the link to its documentation left out)."""
    text = " ".join(str(exc).split())
    text = re.sub(r"^CUDA out of memory\.\s*", "", text)
    sentences = [s for s in re.split(r"(?<=\.)\s+(?=[A-Z])", text) if s]
    kept = [s for s in sentences if not s.startswith(("If reserved", "See documentation", "Including non-PyTorch", "Of the allocated", "Process "))]
    return " ".join(kept[:2]).rstrip(".") or type(exc).__name__


def on_cpu(exc: BaseException) -> bool:
    """Whether the memory that ran out is the machine's (the CPU allocator's refusal), not a GPU's."""
    return "can't allocate memory" in str(exc)


def face_hint(exc: BaseException) -> str:
    """What to do when not even one face fits."""
    if on_cpu(exc):
        return "close other programs, or run on a machine with more memory (or a GPU)"
    return "close other programs that use the GPU, or run on the CPU with --device cpu"


def free_cached_memory() -> None:
    """Give the allocator's cached blocks back, so the retry with fewer faces can use them."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if torch.backends.mps.is_available():
        torch.mps.empty_cache()


class BatchLimit:
    """The most faces one call is given, lowered for the rest of the run when a batch did not fit.

    One per command run (restore's photos, evaluate's methods, clean-dataset's files all share what
    was learned). `on_lower(text)` is told each lowering (the caller shows it as a warning).
    """

    def __init__(self, size: int, on_lower: Callable[[str], None] | None = None) -> None:
        self.size = max(1, int(size))
        self.on_lower = on_lower

    def run(self, items: Sequence[T], call: Callable[[Sequence[T]], list[R]], *, generator: torch.Generator | None = None) -> list[R]:
        """`call` on consecutive chunks of `items` (faces), at most `size` long, the results joined in order.

        `generator`: the one `call` draws from, rewound before a retry. One face that does not fit
        raises OutOfMemory, with advice for the memory that ran out (the GPU's or the machine's)."""
        results: list[R] = []
        start = 0
        while start < len(items):
            chunk = items[start : start + self.size]
            state = generator.get_state() if generator is not None else None
            try:
                results.extend(call(chunk))
            except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are handled; the rest go on up
                if not is_out_of_memory(exc):
                    raise
                free_cached_memory()
                if state is not None:
                    generator.set_state(state)
                if len(chunk) == 1:
                    raise OutOfMemory(f"out of memory restoring one face ({torch_reason(exc)})", hint=face_hint(exc)) from None
                self.size = len(chunk) // 2
                if self.on_lower is not None:
                    self.on_lower(f"out of memory restoring {len(chunk)} faces at once; going on with {self.size} at a time "
                                  f"(pass --batch-size {self.size} to start there)")
                continue
            start += len(chunk)
        return results


def step_out_of_memory(exc: BaseException, step: int, batch_size: int, size: int, world: int = 1) -> OutOfMemory:
    """The one line for a training step (train, finetune) that ran out of memory: no batch is split
    there, since the global batch is part of the run's recipe."""
    split = f" ({batch_size // world} in each of {world} processes)" if world > 1 else ""
    elsewhere = "a machine with more memory" if on_cpu(exc) else "a GPU with more memory"
    return OutOfMemory(f"out of memory in training step {step} with --batch-size {batch_size}{split} at --size {size} ({torch_reason(exc)})",
                       hint=f"start a new run with a smaller --batch-size or --size, or --amp, or train on {elsewhere} "
                            "(a resumed run keeps its --batch-size and --size)")
