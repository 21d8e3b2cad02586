"""Device placement, checked without a GPU: the loop's sampling and update paths run with
the model on a pretend device (tests/pretend_device.py), which fails any op that mixes a
tensor on the device with a host tensor, as CUDA does.

The first GPU run of this project failed exactly so (the training batch stayed on the host:
"Expected all tensors to be on the same device ... index is on cpu"); the guard fails at the
same line. What it cannot check (DeepSpeed's own placement at ZeRO 1-3, NCCL, vLLM) is left
to the ``gpu`` tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from grpo_cli.train import engine as eng
from tests.pretend_device import (
    DEVICE,
    DeviceMismatch,
    OnDevice,
    move_engine,
    move_module,
    pretend_device,
)

# --- the guard's rules ----------------------------------------------------------------------


def test_mixing_a_device_tensor_with_a_host_tensor_fails_as_on_cuda() -> None:
    with pretend_device():
        x = torch.randn(3, 4).to(DEVICE)
        assert isinstance(x, OnDevice) and x.device == DEVICE
        with pytest.raises(DeviceMismatch, match="aten.add.Tensor"):
            x + torch.randn(3, 4)
        y = x * 2 + torch.tensor(1.0)  # a host scalar is fine, as on CUDA
        assert isinstance(y, OnDevice)
        assert float(y.sum()) == pytest.approx(float((x.cpu() * 2 + 1).sum()))
        with pytest.raises(DeviceMismatch):  # a host arange indexed by a device argsort
            torch.arange(3)[torch.argsort(x[:, 0])]
        assert isinstance(x[torch.tensor([0, 2])], OnDevice)  # host indices into the device
        with pytest.raises(DeviceMismatch, match="numpy"):
            x.numpy()
        assert x.tolist() == x.cpu().tolist() and type(x.cpu()) is torch.Tensor


def test_factories_and_moves_make_device_tensors() -> None:
    with pretend_device():
        for t in (torch.zeros(2, device=DEVICE), torch.arange(3, device=DEVICE),
                  torch.tensor([1, 2], device=DEVICE), torch.ones(2).to(DEVICE)):
            assert isinstance(t, OnDevice)
        assert type(torch.zeros(2)) is torch.Tensor  # host code stays on the host
        host = torch.zeros(2)
        host.copy_(torch.ones(2, device=DEVICE))  # copies across devices are allowed
        assert host.tolist() == [1.0, 1.0]


def test_a_module_on_the_device_trains_and_refuses_host_inputs() -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 2)
    plain = torch.nn.Linear(4, 2)
    plain.load_state_dict(lin.state_dict())
    x = torch.randn(3, 4)
    with pretend_device():
        move_module(lin)
        assert isinstance(lin.weight, OnDevice) and isinstance(lin.weight, torch.nn.Parameter)
        with pytest.raises(DeviceMismatch, match="addmm"):
            lin(x)
        lin(x.to(DEVICE)).square().sum().backward()
        assert isinstance(lin.weight.grad, OnDevice)
        grad = lin.weight.grad.cpu()
    plain(x).square().sum().backward()
    torch.testing.assert_close(grad, plain.weight.grad)


def test_the_first_gpu_failure_is_caught_and_moving_the_micro_batch_fixes_it() -> None:
    """train/batch.py's forward pass on a host batch with the model on the device: the
    H100's error, here; the batch's ``to(device)`` (what the update does per micro-batch)
    runs."""
    from transformers import AutoModelForCausalLM

    from grpo_cli.models.load import resolve_model_path
    from grpo_cli.rollout.base import Completion
    from grpo_cli.train.batch import forward_logprobs, make_batch

    model = AutoModelForCausalLM.from_pretrained(resolve_model_path("toy")).eval()
    comps = [Completion(0, 0, [5, 6, 7], [-1.0, -1.0, -1.0], "length"),
             Completion(0, 1, [8], [-1.0], "stop")]
    batch = make_batch([[3, 4], [3, 4]], comps, torch.tensor([1.0, -1.0]), 0, False)
    with torch.no_grad():
        want, _ = forward_logprobs(model, batch, 1.0, with_entropy=False)
        with pretend_device():
            move_module(model)
            with pytest.raises(DeviceMismatch, match="embedding"):
                forward_logprobs(model, batch, 1.0, with_entropy=False)
            got, _ = forward_logprobs(model, batch.to(DEVICE), 1.0, with_entropy=False)
            assert isinstance(got, OnDevice)
            got = got.cpu()
    torch.testing.assert_close(got, want)


# --- the loop on the pretend device ---------------------------------------------------------

ONE_STEP = ["trainer.steps=1", "trainer.prompts_per_step=2", "rollout.n=4", "max_len=16",
            "logger.wandb.mode=disabled", "logger.progress=false", "trainer.val_every=1",
            "data.toy_size=16", "val.num_prompts=2"]


def train_on_pretend_device(monkeypatch: pytest.MonkeyPatch, runs_dir: Path,
                            overrides: list[str]) -> tuple[Path, list[Any]]:
    """One step of the real loop with every engine moved to the device the way DeepSpeed
    moves it to a GPU (ZeRO 0), and the run's device (``Dist.device``) that device. Returns
    the run directory and the engines built."""
    from grpo_cli.startup import load_run_config
    from grpo_cli.train.loop import train

    engines: list[Any] = []
    real_init, real_policy, real_ref = (eng.init_distributed, eng.make_policy_engine,
                                        eng.make_reference_engine)

    def init() -> eng.Dist:
        d = real_init()
        d.device = DEVICE
        return d

    def moved(make: Any) -> Any:
        def build(*args: Any, **kwargs: Any) -> Any:
            engines.append(move_engine(make(*args, **kwargs)))
            return engines[-1]
        return build

    monkeypatch.setattr(eng, "init_distributed", init)
    monkeypatch.setattr(eng, "make_policy_engine", moved(real_policy))
    monkeypatch.setattr(eng, "make_reference_engine", moved(real_ref))
    cfg, resolved = load_run_config([*ONE_STEP, *overrides, f"runs_dir={runs_dir}"])
    with pretend_device():
        run_id = train(cfg, resolved)
    return runs_dir / run_id, engines


CASES = {
    "defaults": [],
    "two-updates-kl": ["trainer.updates_per_batch=2", "algorithm.kl_coef=0.1"],
    "by-length-two-updates-kl": ["trainer.group_by_length=true", "trainer.updates_per_batch=2",
                                 "algorithm.kl_coef=0.1", "trainer.micro_batch_size=2"],
    "generate": ["rollout.drop_finished=false"],
    "vision-language": ["config=conf/experiment/toy_vl.yaml", "data.toy_size=8"],
    "dapo-dynamic-tis-two-updates": ["algorithm=dapo", "algorithm.rollout_correction=tis",
                                     "trainer.updates_per_batch=2"],
    "vision-language-dynamic-icepop": ["config=conf/experiment/toy_vl.yaml", "data.toy_size=8",
                                       "algorithm.dynamic_sampling=true",
                                       "algorithm.dynamic_sampling_max_rounds=2",
                                       "algorithm.rollout_correction=icepop"],
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_step_runs_with_the_model_on_the_device(monkeypatch: pytest.MonkeyPatch,
                                                  runs_dir: Path, name: str) -> None:
    """Sampling (the decode loop, generate, the probe), old and reference log-probs, the
    update and the telemetry: no host tensor meets the model."""
    run, engines = train_on_pretend_device(monkeypatch, runs_dir, CASES[name])
    assert len(engines) == (2 if "algorithm.kl_coef=0.1" in CASES[name] else 1)
    for engine in engines:
        assert all(isinstance(p, OnDevice) for p in engine.module.parameters())
    (m,) = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert np.isfinite(m["loss/pg"]) and m["train/skipped_updates"] == 0
    assert "val/length/mean" in m
    assert json.loads((run / "meta.json").read_text())["status"] == "completed"
    if "dynamic" in name:  # more than one round: the rounds' rows were joined
        assert m["dynamic/rounds"] == 2 and "mismatch/weight_mean" in m


def test_the_device_run_computes_what_the_host_run_does(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    """Same seed, same draws: the pretend device changes where tensors say they are, not
    what the step computes."""
    from grpo_cli.startup import load_run_config
    from grpo_cli.train.loop import train

    on_device, _ = train_on_pretend_device(monkeypatch, tmp_path / "device", [])
    monkeypatch.undo()
    cfg, resolved = load_run_config([*ONE_STEP, f"runs_dir={tmp_path / 'host'}"])
    on_host = tmp_path / "host" / train(cfg, resolved)
    (a,) = [json.loads(x) for x in (on_device / "metrics.jsonl").read_text().splitlines()]
    (b,) = [json.loads(x) for x in (on_host / "metrics.jsonl").read_text().splitlines()]
    for key in ("length/mean", "reward/mean", "loss/pg", "policy/entropy", "val/length/mean"):
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
