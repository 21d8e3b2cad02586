"""The shipped GPU recipes, run for two steps with their own settings except the batch (one
prompt group per rank). They need a CUDA GPU and the model and dataset already in the local
Hugging Face cache (GPU machines here have no network): otherwise they skip, saying which."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from grpo_cli.rollout import vllm_platform
from tests.helpers import REPO, run_grpo

GPU_RECIPES = ["geo3k_qwen2_5_vl_3b", "geo3k_qwen2_5_vl_7b", "math12k_qwen2_5_1_5b"]


def _cached(repo_id: str, repo_type: str) -> bool:
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo_id, repo_type=repo_type, local_files_only=True)
    except Exception:
        return False
    return True


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("name", GPU_RECIPES)
def test_recipe_runs_two_steps(name: str, runs_dir: Path) -> None:
    import torch

    recipe = OmegaConf.load(REPO / "conf" / "experiment" / f"{name}.yaml")
    model, data = recipe.model.path, recipe.data.train_files.split("@")[0]
    for repo_id, kind in ((model, "model"), (data, "dataset")):
        if not _cached(repo_id, kind):
            pytest.skip(f"{kind} {repo_id} is not in the local Hugging Face cache")
    gpus = torch.cuda.device_count()
    if recipe.rollout.backend == "vllm" and vllm_platform() != "cuda":
        pytest.skip("the recipe samples with vLLM: pip install 'grpo-cli[vllm]'")
    tp = min(int(recipe.rollout.tensor_parallel_size), gpus)
    # one prompt group per rank: rollout.n rows, which the recipe's micro-batch need not
    # divide (geo3k: 5 rows, micro-batch 4); null fits the largest that does
    res = run_grpo(runs_dir, "run", f"config=conf/experiment/{name}.yaml",
                   f"trainer.gpus={gpus}", "trainer.steps=2", f"trainer.prompts_per_step={gpus}",
                   "trainer.updates_per_batch=1", "trainer.micro_batch_size=null",
                   "trainer.val_every=0", "logger.progress=false",
                   f"rollout.tensor_parallel_size={tp}", env={"HF_HUB_OFFLINE": "1"},
                   timeout=3600)
    assert res.returncode == 0, res.stderr[-4000:]
