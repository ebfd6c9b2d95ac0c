"""Which model errors mean the device is broken for this process: ``is_fatal_device_error``.

A CUDA error other than out-of-memory (an illegal memory access, a device-side assert, an ECC error, a GPU that
fell off the bus) is sticky: the CUDA context is unusable from then on and every later kernel fails too. Only
a new process gets a new context. Out-of-memory is not fatal: the batch is split and retried (blip.py).

torch raises ``torch.AcceleratorError`` for these (older versions: a plain ``RuntimeError`` whose message starts
with "CUDA error" or a library's status); the plain-``RuntimeError`` test is exact on the type, so an error that
merely quotes one in its message (``ModelProcessError``, from the child process) does not count.
"""

from __future__ import annotations

import torch

_FATAL_PREFIXES = ("CUDA error", "CUDA driver error", "CUBLAS_STATUS_", "CUDNN_STATUS_", "cuDNN error")


def is_fatal_device_error(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return False
    message = str(exc)
    if "out of memory" in message:  # cuBLAS or NCCL running out of memory: still recoverable
        return False
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return True
    return type(exc) is RuntimeError and message.startswith(_FATAL_PREFIXES)
