"""Stand-in for ``comfy.model_management``: device, memory and the interrupt flag."""

from __future__ import annotations

import threading

import torch

OOM_EXCEPTION = torch.cuda.OutOfMemoryError  # what ComfyUI catches for out-of-memory

# what the node asked for, in order: ("free_memory", bytes, device) and ("soft_empty_cache",)
calls: list[tuple] = []


class InterruptProcessingException(Exception):
    """Raised when the user cancels the queue."""


_interrupt = False
_lock = threading.RLock()


def get_torch_device() -> torch.device:
    return torch.device("cpu")


def free_memory(memory_required, device, keep_loaded=()):
    calls.append(("free_memory", memory_required, device))
    return []


def soft_empty_cache(force: bool = False) -> None:
    calls.append(("soft_empty_cache",))


def interrupt_current_processing(value: bool = True) -> None:
    global _interrupt
    with _lock:
        _interrupt = value


def processing_interrupted() -> bool:
    with _lock:
        return _interrupt


def throw_exception_if_processing_interrupted() -> None:
    """Raise (and clear the flag) when an interruption was requested."""
    global _interrupt
    with _lock:
        if _interrupt:
            _interrupt = False
            raise InterruptProcessingException()
