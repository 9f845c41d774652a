"""Per-channel CT (``ChannelCT``) and the profiles that carry it: what trained CT exports and applies."""

from __future__ import annotations

import json

import ct_tune
from ct_tune import InputError
from ct_tune.steering import BetaProfile, ChannelCT, channel_dim, ct

import pytest
import torch
import torch.nn.functional as F
from torch import nn


class Small(nn.Module):
    """A conv block with a reused nn.ReLU, an inline F.relu on a 2-D tensor, and a classifier."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc1 = nn.Linear(width, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x))
        x = F.relu(self.fc1(x.mean((2, 3))))
        return self.fc2(x)


def small(seed: int = 0, width: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return Small(width).eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(5, 1, 6, 6, generator=torch.Generator().manual_seed(0))


def test_each_channel_gets_its_own_beta_and_c_and_beta_one_is_exact_relu():
    x = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(1))
    beta, c = [0.7, 1.0, 0.95, 0.3], [0.5, 0.2, 1.0, 0.0]
    out = ChannelCT(beta, c, name="u")(x)
    for i in range(4):
        torch.testing.assert_close(out[:, i], ct(x[:, i], beta[i], c[i]), rtol=1e-6, atol=1e-6)
    assert torch.equal(out[:, 1], torch.relu(x[:, 1]))  # beta = 1: ReLU bit for bit
    tokens = torch.randn(2, 7, 3)  # (N, L, C): channels last
    assert channel_dim(tokens) == 2 and channel_dim(x) == 1 and channel_dim(torch.zeros(2, 3)) == 1
    out = ChannelCT([0.6, 0.8, 0.9], [0.5, 0.5, 0.5], name="t")(tokens)
    torch.testing.assert_close(out[..., 2], ct(tokens[..., 2], 0.9, 0.5), rtol=1e-6, atol=1e-6)


def test_wrong_channel_count_and_out_of_range_values_are_one_line_errors():
    with pytest.raises(InputError, match=r"unit 'u' has 3 per-channel betas but its ReLU input has shape \(2, 4\)"):
        ChannelCT([0.9, 0.9, 0.9], [0.5, 0.5, 0.5], name="u")(torch.zeros(2, 4))
    with pytest.raises(InputError, match=r"every beta must be in \(0, 1\]"):
        ChannelCT([0.9, 0.0], [0.5, 0.5], name="u")
    with pytest.raises(InputError, match=r"every c must be in \[0, 1\]"):
        ChannelCT([0.9], [1.5], name="u")
    with pytest.raises(InputError, match="as many values of c as betas"):
        ChannelCT([0.9, 0.8], [0.5], name="u")


def per_channel(model: nn.Module, x: torch.Tensor) -> dict[str, ChannelCT]:
    """A ChannelCT for every site of ``model``, with distinct values per channel."""
    widths = {"relu#0": 4, "relu#1": 4, "relu()#0": 6}
    assert ct_tune.units(model, x, "site") == list(widths)
    values = {}
    for k, (unit, n) in enumerate(widths.items()):
        beta = torch.linspace(0.6, 1.0, n) - 0.01 * k
        values[unit] = ChannelCT(beta.clamp(max=1.0), torch.linspace(0.1, 0.9, n), name=unit)
    return values


def test_channel_profile_round_trips_and_reproduces_on_a_fresh_model_exactly(tmp_path, x):
    model = small()
    relu_out = model(x)
    values = per_channel(model, x)
    with ct_tune.steer(model, values, granularity="site", example_input=x) as handle:
        expected = model(x)
        profile = handle.profile(strategy="trained")
    assert not torch.equal(expected, relu_out)
    assert profile.granularity == "channel" and profile.unit_granularity == "site"
    unit = next(iter(values))
    assert profile.channels[unit]["beta"] == values[unit].values()[0].tolist()
    assert profile.betas[unit] == pytest.approx(float(values[unit].values()[0].double().mean()))
    path = profile.save(tmp_path / "trained.json")
    data = json.loads(path.read_text())
    assert data["format_version"] == 2 and data["granularity"] == "channel" and set(data["channels"]) == set(values)
    assert BetaProfile.load(path) == profile
    fresh = small()
    with ct_tune.apply_profile(fresh, path):
        assert torch.equal(fresh(x), expected)
    assert torch.equal(fresh(x), relu_out)  # removed: the model is exactly as before


def test_unit_values_of_length_one_carry_a_c_per_unit(tmp_path, x):
    model = small()
    units = ct_tune.units(model, x, "block")
    values = {unit: ChannelCT([0.9 - 0.1 * k], [0.2 + 0.3 * k], name=unit) for k, unit in enumerate(units)}
    with ct_tune.steer(model, values, granularity="block", example_input=x) as handle:
        expected = model(x)
        profile = handle.profile()
    assert profile.granularity == "block" and all(len(entry["c"]) == 1 for entry in profile.channels.values())
    fresh = small()
    with ct_tune.apply_profile(fresh, profile.save(tmp_path / "block.json")):
        assert torch.equal(fresh(x), expected)


def test_channel_profile_for_another_model_is_refused(tmp_path, x):
    with ct_tune.steer(small(), per_channel(small(), x), granularity="site", example_input=x) as handle:
        path = handle.profile().save(tmp_path / "trained.json")

    class Other(Small):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(F.relu(self.fc1(self.relu(self.conv1(x)).mean((2, 3)))))

    torch.manual_seed(0)
    with pytest.raises(InputError, match="found on a model with other ReLU calls"):
        ct_tune.apply_profile(Other().eval(), path)
    # Same ReLU calls, other widths: the first call says which unit does not fit.
    wide = small(width=5)
    shape = r"per-channel betas but its ReLU input has shape \(5, 5, 6, 6\)"
    with ct_tune.apply_profile(wide, path), pytest.raises(InputError, match=shape):
        wide(x)


def test_bad_channel_fields_are_refused_on_load():
    base = {"format": "ct-tune/beta-profile", "format_version": 2, "granularity": "block", "betas": {"a": 0.9}}
    with pytest.raises(InputError, match=r"channels\['a'\] holds 2 values: several per unit need granularity channel"):
        BetaProfile.from_dict({**base, "channels": {"a": {"beta": [0.9, 0.8], "c": [0.5, 0.5]}}})
    with pytest.raises(InputError, match=r"channels\['a'\]: every beta must be in \(0, 1\]"):
        BetaProfile.from_dict({**base, "channels": {"a": {"beta": [1.2], "c": [0.5]}}})
    with pytest.raises(InputError, match="exactly the units of betas"):
        BetaProfile.from_dict({**base, "channels": {"b": {"beta": [0.9], "c": [0.5]}}})
    with pytest.raises(InputError, match='granularity "channel" needs per-channel values'):
        BetaProfile.from_dict({**base, "granularity": "channel"})
    with pytest.raises(InputError, match="written by a newer ct-tune"):
        BetaProfile.from_dict({**base, "format_version": 3})
    old = BetaProfile.from_dict({**base, "format_version": 1})  # profiles of earlier releases still load
    assert old.channels is None and old.to_dict()["format_version"] == 1 and "channels" not in old.to_dict()


def test_channel_values_refuse_batched_steering(x):
    model = small()
    with ct_tune.steer(model, 1.0, granularity="site", example_input=x) as handle:
        unit = handle.units[0]
        with pytest.raises(InputError, match="batched profiles take float betas"):
            handle.update_batched([{unit: ChannelCT([0.9] * 4, [0.5] * 4, name=unit)}, 0.9])
