"""What several test modules share: the real `grpo` CLI as a subprocess, its environment,
the small batches the integration tests train on, and readers of a finished run. Test
modules import from here, never from each other."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from grpo_cli.telemetry.store import read_metrics

REPO = Path(__file__).resolve().parents[1]

# Small but real: 2 prompts x 4 samples per step, short caps, no progress bar.
TINY = ["trainer.prompts_per_step=2", "rollout.n=4", "trainer.micro_batch_size=4",
        "logger.progress=false", "data.toy_size=64", "val.num_prompts=4"]

# The real model (SmolLM2-135M-Instruct from its GGUF file) on its sums task, small.
SUMS = ["config=conf/experiment/smollm2_sums.yaml", "trainer.prompts_per_step=2",
        "rollout.n=4", "trainer.micro_batch_size=4", "trainer.val_every=0",
        "logger.progress=false", "max_len=32"]

# ZeRO-3 that shards even the toy's tensors (all below DeepSpeed's default persistence
# threshold of 1e5 elements, which keeps them whole) and reduces gradients in small buckets:
# what a real model does at stage 3.
ZERO3_SHARDED = ["trainer.zero_stage=3", "trainer.deepspeed={zero_optimization: "
                 "{stage3_param_persistence_threshold: 0, reduce_bucket_size: 1000}}"]

# Sampler vs trainer log-prob gap (mean |diff| per token) of a correct weight push in fp32.
CORRECT = 1e-5


def cli_env(runs_dir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(GRPO_RUNS_DIR=str(runs_dir), WANDB_SILENT="true", WANDB_MODE="offline",
               TOKENIZERS_PARALLELISM="false")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env.update(extra)
    return env


def grpo_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "grpo_cli", *args]


def run_grpo(runs_dir: Path, *args: str, timeout: float = 600, env: dict[str, str] | None = None,
             **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """`grpo ARGS...` as a user runs it; ``env`` adds to (or overrides) :func:`cli_env`."""
    return subprocess.run(grpo_cmd(*args), cwd=REPO, env=cli_env(runs_dir) | (env or {}),
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def start_grpo(runs_dir: Path, *args: str, env: dict[str, str] | None = None,
               **kwargs: Any) -> subprocess.Popen[str]:
    """`grpo ARGS...` in the background (to signal or kill it); ``env`` as for run_grpo."""
    return subprocess.Popen(grpo_cmd(*args), cwd=REPO, env=cli_env(runs_dir) | (env or {}),
                            text=True, **kwargs)


class Gate:
    """A barrier inside a run, so a test can signal it at a known point instead of racing a
    polling loop against its steps: the run's reward function (the toy's own scores), on the
    ``at``-th batch a process scores, writes ``ready`` and waits until the test opens the
    gate (``go``). Each process counts its own calls (every rank stops at its ``at``-th)."""

    def __init__(self, folder: Path, at: int) -> None:
        self.ready, self.go = folder / "gate.ready", folder / "gate.go"
        self.file = folder / "gate.py"
        self.file.write_text(
            "import time\n"
            "from pathlib import Path\n"
            "from grpo_cli.rewards.math import compute_score\n"
            "CALLS = [0]\n"
            "def fn(batch):\n"
            "    CALLS[0] += 1\n"
            f"    if CALLS[0] == {at}:\n"
            f"        Path({str(self.ready)!r}).touch()\n"
            "        deadline = time.time() + 300\n"
            f"        while not Path({str(self.go)!r}).exists() and time.time() < deadline:\n"
            "            time.sleep(0.05)\n"
            "    return compute_score(batch)\n")

    @property
    def reward(self) -> str:
        """The override that puts the gate in the run."""
        return f"reward.function={self.file}:fn"

    def wait(self, proc: subprocess.Popen[str], timeout: float = 300) -> None:
        """Until the run stands at the gate (it must not have ended)."""
        import time

        deadline = time.time() + timeout
        while not self.ready.exists():
            assert proc.poll() is None, "the run ended before it reached the gate"
            assert time.time() < deadline, "the run did not reach the gate"
            time.sleep(0.05)

    def open(self) -> None:
        self.go.touch()


def run_id_of(res: subprocess.CompletedProcess[str]) -> str:
    """The run id `grpo run` prints last, after checking it succeeded."""
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout.strip().splitlines()[-1]


def only_run(runs_dir: Path) -> Path:
    (run,) = [p for p in runs_dir.iterdir() if p.is_dir() and p.name != "sweeps"]
    return run


def finished_run(runs_dir: Path, *args: str, timeout: float = 600) -> Path:
    """`grpo run ARGS` into an empty ``runs_dir``; the run's directory once it succeeded and
    says so in meta.json."""
    res = run_grpo(runs_dir, "run", *args, timeout=timeout)
    assert res.returncode == 0, res.stderr[-4000:]
    run = only_run(runs_dir)
    assert json.loads((run / "meta.json").read_text())["status"] == "completed"
    return run


def finished_vllm_run(runs_dir: Path, *args: str) -> Path:
    """`grpo run` of the toy's TINY batch with vLLM sampling (ARGS after, so they win)."""
    return finished_run(runs_dir, *TINY, "rollout=vllm", *args, timeout=900)


def tiny_engine(stage: int, lr: float, hidden: int = 8, warmup_steps: int = 0,
                dtype: str = "float32") -> Any:
    """A real DeepSpeed engine (CPU, gloo, one rank) on a 4 -> hidden -> 1 MLP, seeded,
    configured by the project's own ds_config."""
    import torch

    from grpo_cli.config.schema import RunConfig
    from grpo_cli.models.load import DTYPES
    from grpo_cli.train import engine as eng

    eng.init_distributed()
    cfg = RunConfig()
    cfg.trainer.zero_stage, cfg.trainer.lr = stage, lr
    cfg.trainer.warmup_steps = warmup_steps
    cfg.trainer.prompts_per_step, cfg.rollout.n, cfg.trainer.micro_batch_size = 1, 2, 2
    cfg.model.dtype = dtype
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.Linear(hidden, 1))
    return eng.make_policy_engine(model.to(DTYPES[dtype]), cfg, eng.ds_config(cfg, 1))


# Qwen2.5-0.5B's shape (its config.json), for runs that need real sizes without a download.
QWEN2_5_0_5B = {"vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
                "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
                "tie_word_embeddings": True, "max_position_embeddings": 4096}


def random_model(out: Path, **shape: Any) -> Path:
    """A random-init Qwen2 in ``out``: the toy's config with ``shape`` changed (real sizes
    need no download), the toy's tokenizer and generation config. Sampled ids past the
    tokenizer's 261 tokens decode to nothing; the model embeds and scores them as any."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from grpo_cli.config.schema import TOY
    from grpo_cli.models.load import resolve_model_path

    toy = Path(resolve_model_path(TOY))
    config = AutoConfig.from_pretrained(toy, **shape)
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = ["full_attention"] * config.num_hidden_layers
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(toy).save_pretrained(out)
    shutil.copy(toy / "generation_config.json", out / "generation_config.json")
    return out


def gaps(run: Path) -> list[float]:
    """Each step's sampler vs trainer log-prob gap."""
    return [m["rollout/logprob_diff"] for m in read_metrics(run)]


# --- a report's figures, parsed (no headless browser is installable from PyPI here) --------

SVG = "{http://www.w3.org/2000/svg}"



def check_png(data: bytes) -> None:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        assert im.format == "PNG" and im.width > 50 and im.height > 50


def check_svg(data: bytes) -> None:
    root = ET.fromstring(data)
    assert root.tag == f"{SVG}svg"
    for dim in ("width", "height"):
        assert float(re.sub(r"[a-z]+$", "", root.attrib[dim])) > 50, dim
    drawn = [e for e in root.iter() if e.tag in (f"{SVG}path", f"{SVG}image", f"{SVG}text")]
    assert len(drawn) > 10
    assert any(e.tag == f"{SVG}text" for e in drawn)  # text kept as text (svg.fonttype none)


def check_pdf(data: bytes) -> None:
    assert data.startswith(b"%PDF-1.") and data.rstrip().endswith(b"%%EOF")
    assert len(re.findall(rb"/Type\s*/Page[^s]", data)) == 1
    assert b"/FontFile2" in data  # TrueType embedded (pdf.fonttype 42)


CHECK = {"png": check_png, "svg": check_svg, "pdf": check_pdf}


def check_pages(out: Path) -> list[str]:
    """Every figure report.html embeds (data URIs) and report.md links exists and parses;
    returns the Markdown's figure files."""
    page = (out / "report.html").read_text()
    embedded = re.findall(r"<img src='data:(image/[a-z+]+);base64,([A-Za-z0-9+/=]+)'", page)
    assert embedded and len(embedded) == page.count("<img ")
    for mime, data in embedded:
        CHECK["svg" if mime == "image/svg+xml" else "png"](base64.b64decode(data))
    for href in re.findall(r"<a href='([^']+\.(?:png|svg|pdf))'>", page):
        CHECK[href.rsplit(".", 1)[1]]((out / href).read_bytes())
    md = (out / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(linked) == len(embedded)
    for name in linked:
        CHECK[name.rsplit(".", 1)[1]]((out / name).read_bytes())
    return linked


@dataclass
class Arm:
    config: dict  # the arm's resolved config.yaml
    metrics: list[dict]  # metrics.jsonl, one dict per step


def run_sweep(runs_dir: Path, sweep_file: str, *overrides: str,
              timeout: float = 900) -> list[Arm]:
    """Run a shipped sweep file through the CLI into ``runs_dir``; its arms in manifest
    order."""
    res = run_grpo(runs_dir, "sweep", f"sweeps/{sweep_file}", "logger.progress=false",
                   *overrides, timeout=timeout)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    (manifest,) = (runs_dir / "sweeps").glob("*/manifest.json")
    arms = []
    for arm in json.loads(manifest.read_text())["arms"]:
        run = runs_dir / arm["run_id"]
        arms.append(Arm(yaml.safe_load((run / "config.yaml").read_text()), read_metrics(run)))
    return arms
