"""DeadInputs against (X == 0).all(0) over every training example fed."""
import pytest
import torch
from torch import nn

import probes
from probes import DeadInputs, ProbeError


def test_always_zero_features_match_the_data_and_evaluation_is_not_counted():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 2))
    probe = DeadInputs().attach(model)
    seen = []
    for i in range(5):
        x = (torch.rand(8, 3, 4) > 0.85).float()  # sparse: some features zero throughout
        x[:, 0, 0] = 0
        seen.append(x.reshape(8, -1))
        model(x).sum().backward()
    with torch.no_grad():
        model(torch.ones(4, 3, 4))  # evaluation: not counted
    with probes.suspended():
        model(torch.ones(4, 3, 4))  # the library's own scans: not counted
    probe.detach()
    expected = torch.nonzero((torch.cat(seen) == 0).all(0)).flatten().tolist()
    assert 0 in expected and len(expected) < 12
    summary = probe.summary()
    assert summary["always_zero"] == expected
    assert summary == {"layer": "1", "features": 12, "examples": 40, "skipped": 0, "always_zero": expected,
                       "feature_kind": "input"}


def test_model_input_and_conv_features_are_everything_but_the_batch():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU())
    probe = DeadInputs(layer="").attach(model)
    x = torch.rand(4, 2, 5, 5)
    x[:, 1, 2, 3] = 0
    model(x)
    probe.detach()
    assert probe.summary()["always_zero"] == [1 * 25 + 2 * 5 + 3]


def test_unknown_layer_name_is_an_error():
    with pytest.raises(ProbeError, match="no submodule named"):
        DeadInputs(layer="nope").attach(nn.Linear(2, 2))
