"""Fixtures of the steering tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for the module, restored after it.

    Batch-1, 64-pixel forwards gain nothing from a second thread, and next to other processes on a
    2-core machine two OpenMP threads made a timm densenet121 forward 5-70x slower (0.33-4.8 s against
    0.07 s with one thread, measured).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
