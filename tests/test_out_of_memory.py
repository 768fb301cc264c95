"""Out of memory while restoring: the batch is split and retried, the run goes on with the smaller
size, and only one face that does not fit is an error (one line). Simulated with torch's own error
type, raised by stand-in methods above a batch size, as a GPU with too little memory would."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facerestore.out_of_memory import BatchLimit, OutOfMemory, is_out_of_memory, torch_reason

# torch 2.x's message for a CUDA allocation that failed, whole
CUDA_MESSAGE = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 7.79 GiB of which 1.10 GiB is free. "
                "Including non-PyTorch memory, this process has 6.68 GiB memory in use. Of the allocated memory 6.01 GiB is allocated by "
                "PyTorch, and 512.00 MiB is reserved by PyTorch but unallocated. If reserved but unallocated memory is large try setting "
                "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory Management  "
                "(https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)")


def fits_up_to(most: int, calls: list[int]):
    """A batch call that draws one number per item from the generator (as the methods draw noise
    per face) and runs out of memory above `most` items, after drawing."""
    def call(chunk, generator=None):
        calls.append(len(chunk))
        drawn = torch.rand(len(chunk), generator=generator)
        if len(chunk) > most:
            raise torch.OutOfMemoryError(CUDA_MESSAGE)
        return [(item, float(x)) for item, x in zip(chunk, drawn)]
    return call


def test_a_batch_that_does_not_fit_is_halved_until_it_does_and_the_run_keeps_the_size():
    told: list[str] = []
    limit = BatchLimit(8, on_lower=told.append)
    calls: list[int] = []
    generator = torch.Generator().manual_seed(0)
    call = fits_up_to(3, calls)
    out = limit.run(list(range(10)), lambda chunk: call(chunk, generator), generator=generator)
    assert [item for item, _ in out] == list(range(10))
    assert calls == [8, 4, 2, 2, 2, 2, 2] and limit.size == 2
    assert told == ["out of memory restoring 8 faces at once; going on with 4 at a time (pass --batch-size 4 to start there)",
                    "out of memory restoring 4 faces at once; going on with 2 at a time (pass --batch-size 2 to start there)"]
    # the generator was rewound before each retry: the same numbers as a run that never ran out
    reference = torch.rand(10, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal([x for _, x in out], reference.numpy())
    # the next call of the run starts at the size that fits, without a word
    calls.clear()
    limit.run(list(range(5)), lambda chunk: call(chunk, generator), generator=generator)
    assert calls == [2, 2, 1] and len(told) == 2


def test_one_face_that_does_not_fit_is_one_line_with_torchs_numbers_and_what_to_do():
    with pytest.raises(OutOfMemory) as info:
        BatchLimit(4).run([1, 2], fits_up_to(0, []))
    assert info.value.one_line() == ("out of memory restoring one face (Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 7.79 GiB "
                                     "of which 1.10 GiB is free); close other programs that use the GPU, or run on the CPU with --device cpu")


def test_other_errors_are_not_retried():
    calls = []

    def broken(chunk):
        calls.append(len(chunk))
        raise RuntimeError("CUDNN_STATUS_INTERNAL_ERROR")

    with pytest.raises(RuntimeError, match="CUDNN_STATUS_INTERNAL_ERROR"):
        BatchLimit(8).run(list(range(8)), broken)
    assert calls == [8]


@pytest.mark.parametrize("exc, expected", [
    (torch.OutOfMemoryError(CUDA_MESSAGE), True),
    (RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB, other allocations: 1.01 GB, max allowed: 18.13 GB)."), True),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to allocate 68719476736 bytes."), True),
    (RuntimeError("Expected all tensors to be on the same device"), False),
    (ValueError("out of memory"), False),
], ids=["cuda", "mps", "cpu", "other-runtime-error", "not-a-runtime-error"])
def test_out_of_memory_is_told_from_other_errors(exc, expected):
    assert is_out_of_memory(exc) is expected


def test_torch_reason_keeps_what_was_asked_and_what_was_free():
    assert torch_reason(torch.OutOfMemoryError(CUDA_MESSAGE)) == "Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 7.79 GiB of which 1.10 GiB is free"
    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)")
    assert "DefaultCPUAllocator: can't allocate memory: you tried to allocate 68719476736 bytes" in torch_reason(cpu)


def test_restore_crops_gives_the_same_faces_when_it_has_to_split_its_batches():
    """pipeline.restore_crops with a real method (the bundled baseline) whose restore runs out of
    memory above 2 faces: the same output, bit for bit, as with --batch-size 2."""
    from facerestore.methods.base import MethodOptions
    from facerestore.methods.registry import build_method
    from facerestore.pipeline import restore_crops

    method = build_method("baseline", MethodOptions(device="cpu"))
    real = method.restore

    def small_gpu(batch, generator=None):
        if batch.shape[0] > 2:
            raise torch.OutOfMemoryError(CUDA_MESSAGE)
        return real(batch, generator=generator)

    rng = np.random.default_rng(0)
    crops = [rng.uniform(0, 1, (512, 512, 3)).astype(np.float32) for _ in range(5)]
    expected = restore_crops(method, crops, batch_size=2, seed=3)
    method.restore = small_gpu
    told: list[str] = []
    got = restore_crops(method, crops, batch_size=8, seed=3, limit=BatchLimit(8, on_lower=told.append))
    assert len(got) == 5 and all(np.array_equal(a, b) for a, b in zip(got, expected))
    assert told == ["out of memory restoring 5 faces at once; going on with 2 at a time (pass --batch-size 2 to start there)"]


def test_the_advice_fits_the_memory_that_ran_out():
    """On the CPU "run on the CPU with --device cpu" was the advice for the CPU's own allocator."""
    def refused(chunk):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to allocate 68719476736 bytes.")

    with pytest.raises(OutOfMemory) as info:
        BatchLimit(1).run([1], refused)
    assert info.value.hint == "close other programs, or run on a machine with more memory (or a GPU)"
