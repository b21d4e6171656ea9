"""Out of memory, said in words: which model, at what frame size, and what to try.

torch raises ``torch.OutOfMemoryError`` (a RuntimeError), TensorRT and CUDA report a failed
allocation in a message, the CPU raises ``MemoryError``; all become one ``OutOfMemory``.
"""

from __future__ import annotations

from collections.abc import Sequence

from segengine.errors import EngineError, OutOfMemory

# What CUDA, cuda-python, TensorRT and ONNX Runtime put in their messages for a failed allocation.
_MARKERS = ("out of memory", "cudaerrormemoryallocation", "cuda_error_out_of_memory", "failed to allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, OutOfMemory)):
        return True
    if isinstance(exc, EngineError) and not isinstance(exc, RuntimeError):
        return False  # a source or sink error that merely mentions memory is not the model's
    if type(exc).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError, torch.cuda.OutOfMemoryError
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(marker in text for marker in _MARKERS)


def out_of_memory(exc: BaseException, backend: str, models: Sequence[str], frame_size: tuple[int, int]) -> OutOfMemory:
    """The error to raise instead of ``exc``: names the model and frame size, and what to try."""
    h, w = frame_size
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    error = OutOfMemory(
        f"{backend} ran out of memory running {' + '.join(models) or 'the model'} on {w}x{h} frames ({first}). "
        "Try: smaller frames (resize the source), FP16 (`segengine build --fp16` for TensorRT, "
        "--precision bf16 on OpenVINO), one stream or a smaller batch, closing other GPU programs, "
        "or the CPU (--backend onnxruntime)")
    error.__cause__ = exc
    return error
