"""Checkpoints: completion markers, RNG state round trips, real DeepSpeed engines (ZeRO 0/2/3
on CPU) saved and loaded with ``weights_only=True``, and a tampered checkpoint refused. The
whole resume path is exercised end to end in tests/integration/test_resume.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from grpo_cli.errors import UnsafeCheckpoint
from grpo_cli.train import engine as eng
from grpo_cli.train.checkpoint import (
    COMPLETE,
    last_complete_step,
    load,
    save,
)
from tests.helpers import tiny_engine


def test_only_checkpoints_with_a_completion_marker_count(tmp_path: Path) -> None:
    assert last_complete_step(tmp_path / "missing") is None
    for step, complete in ((2, True), (5, True), (8, False)):
        d = tmp_path / f"step-{step:06d}"
        d.mkdir()
        (d / "mp_rank_00_model_states.pt").write_bytes(b"x")
        if complete:
            (d / COMPLETE).write_text(json.dumps({"step": step}))
    (tmp_path / "latest").write_text("step-000008")  # DeepSpeed's pointer is not trusted
    (tmp_path / "step-x").mkdir()
    assert last_complete_step(tmp_path) == 5


class _Exploit:
    """Unpickling this runs code (it creates a file): what a tampered checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def _engine(stage: int, dtype: str = "float32") -> Any:
    return tiny_engine(stage, lr=0.05, warmup_steps=4, dtype=dtype)  # a scheduler's state too


def _train_step(engine: Any, x: torch.Tensor) -> None:
    out = engine(x.to(next(engine.module.parameters()).dtype))
    engine.backward(out.float().pow(2).sum(), scale_wrt_gas=False)
    eng.optimizer_step(engine)


def _weights(engine: Any, stage: int) -> list[torch.Tensor]:
    with eng.gathered(engine, stage) as module:
        return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize(("stage", "dtype"), [(0, "float32"), (2, "float32"), (3, "float32"),
                                              (0, "bfloat16"), (3, "bfloat16")])
def test_deepspeed_checkpoint_round_trip_loads_with_weights_only(tmp_path: Path,
                                                                 stage: int, dtype: str) -> None:
    """Save after one step, train on, load: weights and optimiser state are back (the next
    step from the loaded state equals the next step from the saved one), and every file was
    read by ``torch.load(weights_only=True)``. bf16 at stage 0 runs DeepSpeed's bf16
    optimizer (stage 1: fp32 gradient accumulation), whose state is another layout."""
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
    engine = _engine(stage, dtype)
    _train_step(engine, x)
    save(engine, tmp_path, 1, {"sampler": {"pos": 3}}, is_main=True)
    _train_step(engine, x)
    expected = _weights(engine, stage)
    _train_step(engine, x)  # drift away from the saved state
    save(engine, tmp_path, 2, {"sampler": {"pos": 9}}, is_main=True)  # the newest is not it

    calls: list[bool] = []
    real_load = torch.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("weights_only") is True)
        return real_load(*args, **kwargs)

    torch.load = spy  # observes the real loader, changes nothing
    try:
        client = load(engine, tmp_path, 1)
    finally:
        torch.load = real_load
    assert client["sampler"] == {"pos": 3} and client["step"] == 1
    assert calls and all(calls)
    _train_step(engine, x)
    for want, got in zip(expected, _weights(engine, stage), strict=True):
        torch.testing.assert_close(got, want)


def test_a_checkpoint_holding_code_is_refused(tmp_path: Path) -> None:
    engine = _engine(0)
    path = save(engine, tmp_path, 0, {"sampler": {}}, is_main=True)
    marker = tmp_path / "pwned"
    (shard,) = path.glob("*model_states.pt")
    torch.save({"module": _Exploit(marker)}, shard)
    with pytest.raises(UnsafeCheckpoint, match="model_states.pt: refused to load"):
        load(engine, tmp_path, 0)
    assert not marker.exists()
    torch.load(shard, weights_only=False)  # the file really was dangerous
    assert marker.exists()


def test_an_fp16_loss_scaler_loads_with_weights_only(tmp_path: Path) -> None:
    """fp16 optimisers save their DynamicLossScaler (DeepSpeed's fp16 needs a GPU, so the
    object is saved here as they save it). It is plain data and must load; a class that is
    not allowed is still refused."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler

    from grpo_cli.train.checkpoint import SafeCheckpointEngine

    scaler = DynamicLossScaler(init_scale=2**16, scale_window=1000, min_scale=1,
                               delayed_shift=2, consecutive_hysteresis=False)
    scaler.cur_scale, scaler.cur_iter = 2.0**11, 417  # a state worth restoring
    path = tmp_path / "optim_states.pt"
    torch.save({"optimizer_state_dict": {"loss_scaler": scaler, "overflow": False}}, path)
    loaded = SafeCheckpointEngine(None).load(str(path))["optimizer_state_dict"]["loss_scaler"]
    assert isinstance(loaded, DynamicLossScaler)
    assert (loaded.cur_scale, loaded.cur_iter, loaded.dtype) == (2.0**11, 417, torch.float16)
    torch.save({"x": _Exploit(tmp_path / "pwned")}, path)
    with pytest.raises(UnsafeCheckpoint):
        SafeCheckpointEngine(None).load(str(path))
