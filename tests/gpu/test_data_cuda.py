"""A split's rows on CUDA: resident on the GPU when they fit ``resident_mb``, else streamed from pinned memory;
the same float32 pixels either way."""

from __future__ import annotations

from ct_tune.data import Samples

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("encoding", ["u8*1/255", "u8/255"])
def test_resident_and_streamed_rows_are_the_same_pixels(encoding):
    stored = torch.randint(0, 256, (300, 3, 16, 16), dtype=torch.uint8)
    samples = Samples(stored, encoding)
    resident = samples.on("cuda", resident_mb=1)  # 0.2 MB: fits
    streamed = samples.on("cuda", resident_mb=0)
    assert resident.resident and resident.stored.device.type == "cuda"
    assert not streamed.resident and streamed.stored.device.type == "cpu"
    index = torch.tensor([5, 299, 0, 17])
    for rows in (slice(0, 128), slice(128, 300), index, index.cuda()):
        a, b = resident[rows], streamed[rows]
        assert a.device.type == b.device.type == "cuda" and a.dtype == torch.float32
        assert torch.equal(a, b)
        assert torch.equal(b.cpu(), samples[rows.cpu() if isinstance(rows, torch.Tensor) else rows])
    assert torch.equal(resident.all(chunk=64), streamed.all(chunk=100))


def test_a_split_larger_than_resident_mb_streams_and_a_float_split_stays_float():
    floats = Samples(torch.rand(64, 3, 8, 8))
    assert floats.on("cuda", resident_mb=1).resident  # 48 kB
    big = Samples(torch.zeros(2**20 + 1, dtype=torch.uint8).view(-1, 1), "u8/255")
    assert not big.on("cuda", resident_mb=1).resident  # one byte over 1 MiB
    back = floats.on("cuda", resident_mb=1).on("cpu")
    assert back.stored.device.type == "cpu" and torch.equal(back[0:64], floats[0:64])
