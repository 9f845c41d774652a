"""``PretrainConfig.check``: bad settings fail in milliseconds, before Lightning is imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import SOURCE_ROOT

CHECKS = textwrap.dedent(
    """
    import json, sys
    from ct_tune import InputError
    from ct_tune.training import PretrainConfig

    cases = json.loads(sys.argv[1])
    out = {"errors": [], "ok": None}
    for kwargs in cases:
        try:
            PretrainConfig(**kwargs).check()
            out["errors"].append(None)
        except InputError as error:
            out["errors"].append(str(error))
    PretrainConfig(data="digits", epochs=1, tracking_uri="sqlite:///m.db").check()
    out["output"] = str(PretrainConfig(data="mnist5k", seed=3).output_path())
    out["lightning"] = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning"))
    print(json.dumps(out))
    """
)

CASES = [
    ({"data": "imagenet-22k"}, "unknown dataset 'imagenet-22k'; choose one of: "),
    ({"model": "no_such_model_xyz"}, "no_such_model_xyz"),
    ({"weights": "IMAGENET1K_V1", "checkpoint": "{ck}"}, "--weights and --checkpoint both give starting weights"),
    ({"checkpoint": "/nowhere/net.pt"}, "checkpoint file /nowhere/net.pt not found"),
    ({"epochs": 0}, "--epochs must be at least 1, not 0"),
    ({"lr": 0.0}, "--lr must be positive, not 0.0"),
    ({"lr": float("nan")}, "--lr must be positive, not nan"),
    ({"batch_size": 0}, "--batch-size must be at least 1, not 0"),
    ({"weight_decay": -1e-4}, "--weight-decay must be 0 or more, not -0.0001"),
    ({"tracking_uri": "file:///tmp/mlruns"}, "MLflow's file store, which ct-tune does not use"),
    ({"activation": "tanh"}, "unknown activation 'tanh'; choose one of: relu, silu, gelu"),
    ({"model": "resnet18", "activation": "silu"}, "activation 'silu' is built into cifar_resnet_small only"),
    ({"activation": "gelu", "checkpoint": "{ck}"}, "--activation gelu builds a fresh network"),
    ({"checkpoint": "{ck}"}, None),
    ({"activation": "silu"}, None),
]


@pytest.mark.slow  # a fresh interpreter: importing ct_tune and torch takes ~5 s here
def test_check_fails_fast_without_lightning(tmp_path):
    checkpoint = tmp_path / "net.pt"
    checkpoint.write_bytes(b"weights")  # only its existence is checked before training
    cases = [
        {k: (v.format(ck=checkpoint) if isinstance(v, str) else v) for k, v in kwargs.items()} for kwargs, _ in CASES
    ]
    env = {**os.environ, "PYTHONPATH": str(SOURCE_ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [sys.executable, "-c", CHECKS, json.dumps(cases)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    for (kwargs, expected), error in zip(CASES, result["errors"], strict=True):
        if expected is None:
            assert error is None, (kwargs, error)
        else:
            assert error is not None and expected in error and "\n" not in error, (kwargs, error)
    assert result["output"] == "checkpoints/cifar_resnet_small-mnist5k-seed3.pt"
    assert result["lightning"] == []  # checked without importing Lightning


@pytest.mark.parametrize(("model", "stem"), [("resnet18", "resnet18"), ("mypkg.nets:build", "mypkg_nets_build")])
def test_output_path(model, stem):
    from ct_tune.training import PretrainConfig

    assert str(PretrainConfig(model=model, data="digits").output_path()) == f"checkpoints/{stem}-digits-seed0.pt"
    assert str(PretrainConfig(model=model, out="x/y.pt").output_path()) == "x/y.pt"


def test_silu_and_gelu_get_their_own_output_path_and_model_kwargs():
    from ct_tune.training import PretrainConfig

    silu = PretrainConfig(activation="silu", data="digits")
    assert str(silu.output_path()) == "checkpoints/cifar_resnet_small-silu-digits-seed0.pt"
    assert silu.model_kwargs() == {"activation": "silu"}
    relu = PretrainConfig(data="digits")
    assert str(relu.output_path()) == "checkpoints/cifar_resnet_small-digits-seed0.pt" and relu.model_kwargs() == {}
