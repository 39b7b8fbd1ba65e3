"""CPU threads for torch: many for training, one while acting in env rollouts.

During rollouts the policy runs a tiny batch per decision and then waits for the env
workers. With several OpenMP threads, torch's idle threads spin-wait after every op and
take the cores the env workers need to step and render (measured: 2 threads made
validation rollouts several times slower on 2 cores than 1 thread).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def acting_threads() -> contextlib.AbstractContextManager:
    """The thread setting for env rollouts: one thread."""
    return torch_threads(1)
