"""Weights pushed to a colocated vLLM engine: checkpoint names and ZeRO-3 gathering.

What vLLM receives, checked without it: the names are those of the HF checkpoint files vLLM
loads at start-up, and the tensors are the full, unsharded weights. tests/vllm pushes them
into a real engine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from grpo_cli.config.schema import ModelConfig
from grpo_cli.models.load import load_causal_lm
from grpo_cli.models.toy import ensure_toy_model
from grpo_cli.models.toy_vl import ensure_toy_vl_model
from grpo_cli.train.weights import checkpoint_names, iter_full_params

REPO = Path(__file__).resolve().parents[2]


def saved_keys(model_dir: Path) -> set[str]:
    keys: set[str] = set()
    for f in model_dir.glob("*.safetensors"):
        with safe_open(str(f), "pt") as s:
            keys |= set(s.keys())
    return keys


@pytest.mark.parametrize("build", [ensure_toy_model, ensure_toy_vl_model])
def test_names_are_the_checkpoint_names_vllm_loads(build) -> None:  # noqa: ANN001
    """For Qwen2.5-VL transformers names modules `model.language_model.*` while the files say
    `model.*`; every pushed name must be one vLLM finds in the checkpoint it started from."""
    model_dir = Path(build())
    model = load_causal_lm(str(model_dir), ModelConfig(path=str(model_dir)))
    names = checkpoint_names(model)
    assert set(names.values()) == saved_keys(model_dir)
    pushed = dict(iter_full_params(model, zero_stage=0, names=names))
    assert set(pushed) == saved_keys(model_dir)
    module_params = dict(model.named_parameters())
    for module_name, saved_name in names.items():
        # the parameter's own storage: no copy at ZeRO 0-2
        assert pushed[saved_name].data_ptr() == module_params[module_name].data_ptr()


def test_zero3_params_are_gathered_one_at_a_time_on_two_ranks(tmp_path: Path) -> None:
    model_dir = ensure_toy_vl_model()
    out = tmp_path / "rank"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           str(REPO / "tests/integration/zero3_gather_worker.py"), str(model_dir), str(out)]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = [json.loads(Path(f"{out}.{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert sorted(r["names"]) == r["saved"]  # every weight, under its checkpoint name
        assert r["equal"]  # the full tensor, equal to the file's
        assert r["most_gathered"] == 1  # never more than the one being pushed
        assert r["gathered_after"] == 0  # and released afterwards
        assert r["local"] < r["total"]  # the rank really held only a shard
    assert ranks[0]["names"] == ranks[1]["names"]  # in step: the gather is a collective
