"""Vision-language GRPO on CPU with the embedded Qwen2.5-VL toy: images reach the model through
qwen-vl-utils and the processor, sampling and training agree on log-probs (so the 3-D rope
positions match between generate and the training forward), and EasyR1/geometry3k-style
Parquet data runs through the real CLI with bad rows handled as configured."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from grpo_cli.config.schema import DataConfig
from grpo_cli.data.datasets import build_prompts
from grpo_cli.data.toy import IMAGE_SIZE, generate_rows, render_problem
from grpo_cli.models.load import load_processor, load_tokenizer, resolve_model_path
from grpo_cli.models.toy_vl import IMAGE_PAD
from grpo_cli.rollout.base import RolloutRequest
from grpo_cli.rollout.hf import HFRollout
from grpo_cli.telemetry.store import read_metrics, read_rollouts
from grpo_cli.train.batch import forward_logprobs, make_batch
from tests.helpers import TINY

# 112x28 pixels -> 2x8 patches of 14 px (one temporal slice), merged 2x2 -> 4 image tokens.
GRID = [1, IMAGE_SIZE[1] // 14, IMAGE_SIZE[0] // 14]
PATCH_DIM = 3 * 2 * 14 * 14  # channels x temporal patch x patch x patch


@pytest.fixture(scope="module")
def vl() -> tuple[str, object, object, object]:
    from transformers import AutoModelForImageTextToText

    path = resolve_model_path("toy-vl")
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    return path, load_tokenizer(path), load_processor(path), model


def test_images_reach_the_model_and_sampling_logprobs_match_training(vl) -> None:
    path, tokenizer, processor, model = vl
    data = DataConfig(max_prompt_length=64)
    prompts = build_prompts(generate_rows("add-vl", 3, seed=5), data, tokenizer, processor)
    image_token = model.config.image_token_id
    for ids in prompts.prompt_ids:  # the processor expanded one pad into the merged patches
        assert ids.count(image_token) == GRID[1] * GRID[2] // 4
    assert tokenizer.convert_tokens_to_ids(IMAGE_PAD) == image_token
    vision = [prompts.vision(i, data) for i in range(3)]
    for v in vision:
        assert v["image_grid_thw"].tolist() == [GRID]
        assert v["pixel_values"].shape == (GRID[1] * GRID[2], PATCH_DIM)

    n = 2
    rollout = HFRollout(lambda: _ctx(model), tokenizer.pad_token_id, [tokenizer.eos_token_id],
                        micro_batch_size=4, image_token_id=image_token)
    torch.manual_seed(0)
    result = rollout.generate(RolloutRequest(prompts.prompt_ids, n=n, max_new_tokens=12,
                                             multi_modal=vision))
    comps = result.completions
    assert len(comps) == 3 * n
    batch = make_batch([prompts.prompt_ids[c.prompt_index] for c in comps], comps,
                       torch.zeros(len(comps)), tokenizer.pad_token_id, False,
                       [vision[c.prompt_index] for c in comps], image_token)
    with torch.no_grad():
        logp, _ = forward_logprobs(model, batch, 1.0, False)
    for i, c in enumerate(comps):  # left-padded prompts of different lengths, one batch
        got = logp[i, : len(c.token_ids)]
        torch.testing.assert_close(got, torch.tensor(c.logprobs), atol=2e-4, rtol=1e-4)

    # The image matters: other pixels give other log-probs for the same tokens.
    blank = [{**v, "pixel_values": torch.zeros_like(v["pixel_values"])} for v in vision]
    batch.vision = [blank[c.prompt_index] for c in comps]
    with torch.no_grad():
        logp_blank, _ = forward_logprobs(model, batch, 1.0, False)
    assert not torch.allclose(logp_blank, logp)


class _ctx:
    def __init__(self, model: object) -> None:
        self.model = model

    def __enter__(self) -> object:
        return self.model

    def __exit__(self, *exc: object) -> None:
        return None


def _geo3k_parquet(tmp_path: Path, bad_row: bool) -> Path:
    """geometry3k's column layout (problem with <image>, answer, images as HF Image dicts),
    each image in a different accepted form; optionally one corrupt row."""
    (tmp_path / "figures").mkdir()
    rows = []
    for i, row in enumerate(generate_rows("add", 12, seed=3)):
        png = render_problem(row["problem"])
        if i % 3 == 0:
            image = {"bytes": png, "path": None}
        elif i % 3 == 1:
            (tmp_path / "figures" / f"{i}.png").write_bytes(png)
            image = {"bytes": None, "path": f"figures/{i}.png"}  # relative to the file
        else:
            image = {"bytes": None,
                     "path": "data:image/png;base64," + base64.b64encode(png).decode()}
        rows.append({"problem": f"<image>{row['problem']}", "answer": row["answer"],
                     "images": [image]})
    if bad_row:
        rows[4]["images"] = [{"bytes": b"\x89PNG garbage", "path": None}]
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_geometry3k_style_parquet_trains_with_zero2_and_skips_a_bad_row(grpo, runs_dir: Path,
                                                                       tmp_path: Path) -> None:
    data = _geo3k_parquet(tmp_path, bad_row=True)
    args = ["run", *TINY, "model.path=toy-vl", f"data.train_files={data}",
            "trainer.steps=2", "trainer.zero_stage=2", "logger.sample_every=1"]
    res = grpo(*args)
    assert res.returncode == 2, res.stderr[-2000:]
    (line,) = res.stderr.strip().splitlines()
    assert f"data.train_files={data}: row 4" in line and "not a readable image" in line
    assert "data.on_bad_row=skip" in line

    res = grpo(*args, "data.on_bad_row=skip")
    assert res.returncode == 0, res.stderr[-3000:]
    run = runs_dir / res.stdout.strip().splitlines()[-1]
    meta = json.loads((run / "meta.json").read_text())
    assert meta["bad_rows"] == 1 and meta["train_prompts"] == 11
    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == [0, 1]
    for m in metrics:
        assert 0 <= m["length/clip_ratio"] <= 1 and m["length/mean"] > 0
        assert {"length/p90", "reward/mean", "policy/entropy"} <= m.keys()
    assert "val/length/mean" in metrics[0]
    rollouts = read_rollouts(run)
    assert len(rollouts) == 2 * 2 * 4
    samples = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert all(s["prompt"].startswith("<|vision_start|><|image_pad|><|vision_end|>")
               for s in samples)


def test_toy_vl_experiment_runs_with_zero3(grpo, runs_dir: Path) -> None:
    res = grpo("run", "config=conf/experiment/toy_vl.yaml", *TINY, "trainer.steps=2",
               "trainer.zero_stage=3")
    assert res.returncode == 0, res.stderr[-3000:]
    run = runs_dir / res.stdout.strip().splitlines()[-1]
    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == [0, 1]
    assert all(m["max_len"] == 32 for m in metrics)
    # the sampler (hf, on gathered shards) and the trainer agree on every token
    assert all(m["rollout/logprob_diff"] < 1e-5 for m in metrics)
    assert (run / "wandb").is_dir()


def test_a_text_model_refuses_image_rows(grpo) -> None:
    res = grpo("run", *TINY, "data.train_files=toy:add-vl", "trainer.steps=1")
    assert res.returncode == 2
    assert "row 0 has images (data.image_key=images) but the model is text-only" in res.stderr


def test_rendered_problem_is_a_png_of_the_toy_size() -> None:
    from PIL import Image

    image = Image.open(io.BytesIO(render_problem("3+5+2")))
    assert image.size == IMAGE_SIZE and image.format == "PNG"
    assert len(set(image.convert("L").getdata())) > 2  # text was drawn


def test_exported_vl_task_round_trips_through_jsonl_base64(vl, tmp_path: Path) -> None:
    """`grpo toy export --task add-vl` writes images as base64 data URIs; loading that file
    gives the same prompts and the same pixels as the generated rows."""
    from grpo_cli.data.datasets import load_rows
    from grpo_cli.data.toy import export_jsonl

    _, tokenizer, processor, _ = vl
    data = DataConfig(max_prompt_length=64)
    path = export_jsonl(tmp_path / "vl.jsonl", task="add-vl", size=4, seed=2)
    assert json.loads(path.read_text().splitlines()[0])["images"][0].startswith(
        "data:image/png;base64,")
    loaded = build_prompts(load_rows(str(path), data, seed=0), data, tokenizer, processor,
                           str(path))
    direct = build_prompts(generate_rows("add-vl", 4, seed=2), data, tokenizer, processor)
    assert loaded.prompt_ids == direct.prompt_ids
    for i in range(4):
        assert torch.equal(loaded.vision(i, data)["pixel_values"],
                           direct.vision(i, data)["pixel_values"])
