"""Bad input through the real CLI: one line naming the key or file and what is allowed,
exit code 2, no traceback (``--debug`` shows it), and nothing half-made left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from grpo_cli.rollout import vllm_available
from tests.helpers import TINY

QUICK = [*TINY, "trainer.steps=1", "logger.wandb.mode=disabled"]


@pytest.fixture
def files(tmp_path: Path) -> Path:
    good = '{"problem": "1+1", "answer": "2"}\n'
    (tmp_path / "broken.jsonl").write_text(good + '{"problem": "2+2", "answer"\n')
    (tmp_path / "nocol.jsonl").write_text(good + '{"question": "x"}\n')
    (tmp_path / "noimport.py").write_text("import not_a_module_xyz\ndef fn(b):\n    return []\n")
    (tmp_path / "wrongtype.py").write_text("def fn(batch):\n    return ['high' for _ in batch]\n")
    (tmp_path / "short.py").write_text("def fn(batch):\n    return [1.0]\n")
    (tmp_path / "nooverall.py").write_text("def fn(b):\n    return [{'acc': 1.0} for _ in b]\n")
    (tmp_path / "firstrow.jsonl").write_text('{"question": "1+1", "answer": "2"}\n')
    (tmp_path / "run1" / "sub").mkdir(parents=True)
    (tmp_path / "broken.yaml").write_text("# grpo run config=broken.yaml\ntrainer:\n  steps: 3"
                                         "\n lr: [1\n")
    (tmp_path / "list.yaml").write_text("- trainer.steps=3\n")
    (tmp_path / "typo.yaml").write_text("trainer:\n  stesp: 3\n")
    (tmp_path / "easyr1.yaml").write_text("worker:\n  rollout:\n    n: 4\n")
    return tmp_path


CASES = [
    # (argv, text the one line must contain); {d} is the fixture's directory
    (["run", "trainer.bogus=1"], "trainer.bogus"),
    # typos get the nearest key, other frameworks' names get this project's key
    (["run", "max_lenght=64"], "max_lenght: no such config key; did you mean max_len?"),
    (["run", "trainer.stesp=3"], "did you mean trainer.steps?"),
    (["run", "trainer.temperature=0.7"], "did you mean rollout.temperature?"),
    (["run", "worker.rollout.n=4"], "worker.rollout.n: not a key here; use rollout.n"),
    (["run", "trainer.save_freq=5"], "use trainer.save_every"),
    (["run", "trainer.val_freq=5"], "use trainer.val_every"),
    (["run", "data.rollout_batch_size=128"], "use trainer.prompts_per_step"),
    (["run", "worker.actor.global_batch_size=64"], "use trainer.updates_per_batch"),
    (["run", "actor_rollout_ref.rollout.n=4"], "use rollout.n"),
    (["run", "+max_lenght=64"], "did you mean max_len?"),
    (["run", "config={d}/typo.yaml"], "config={d}/typo.yaml: trainer.stesp: no such config key"),
    (["run", "config={d}/easyr1.yaml"], "worker.rollout.n: not a key here; use rollout.n"),
    # a malformed experiment file: the user's file and line, not a temp copy
    (["run", "config={d}/broken.yaml"], "config={d}/broken.yaml: not valid YAML at line 4"),
    (["run", "config={d}/list.yaml"], "config={d}/list.yaml: expected a mapping of keys"),
    (["run", "trainer.micro_batch_size=32", "rollout.n=4", "trainer.prompts_per_step=4"],
     "trainer.micro_batch_size=32 must divide the 16 completions"),
    (["run", "data.train_files={d}/firstrow.jsonl"],
     "data.prompt_key=problem: data.train_files={d}/firstrow.jsonl has no such column "
     "(columns: answer, question)"),
    (["run", "reward.function=grpo_cli.rewards.nope:fn"], "no module named grpo_cli.rewards.nope"),
    (["run", "trainer.steps=ten"], "trainer.steps"),
    (["run", "max_len=0"], "data.max_response_length (max_len)=0: must be > 0"),
    (["run", "data.max_prompt_length=-5"], "data.max_prompt_length=-5: must be > 0"),
    (["run", "rollout.n=1"], "rollout.n=1"),
    # values below 1 where the batch arithmetic would divide by them
    (["run", "rollout.n=0"], "rollout.n=0: GRPO needs at least 2 samples per prompt"),
    (["run", "rollout.n=-2"], "rollout.n=-2: GRPO needs at least 2 samples per prompt"),
    (["run", "trainer.prompts_per_step=0"], "trainer.prompts_per_step=0: must be >= 1"),
    (["run", "trainer.prompts_per_step=-1"], "trainer.prompts_per_step=-1: must be >= 1"),
    (["run", "trainer.micro_batch_size=0"], "trainer.micro_batch_size=0: must be >= 1"),
    (["run", "trainer.updates_per_batch=0"], "trainer.updates_per_batch=0: must be >= 1"),
    # a template with braces and spaces is override grammar unless quoted
    # (braces doubled: the cases are str.format-ted with the fixture's directory)
    (["run", "data.prompt_template={{problem}} Answer:"],
     "data.prompt_template: the value '{{problem}} Answer:' is not valid override syntax"),
    # dynamic sampling and the mismatch correction
    (["run", "algorithm.dynamic_sampling_max_rounds=0"],
     "algorithm.dynamic_sampling_max_rounds=0: must be >= 1"),
    (["run", "algorithm.filter_groups.max_num_gen_batches=0"],  # veRL's name, its "no limit"
     "algorithm.dynamic_sampling_max_rounds=0: must be >= 1"),
    (["run", "algorithm.filter_low=0.9", "algorithm.filter_high=0.1"],
     "algorithm.dynamic_sampling_low=0.9 must be below algorithm.dynamic_sampling_high=0.1"),
    (["run", "algorithm.filter_groups.metric=acc"], "use algorithm.dynamic_sampling_key"),
    (["run", "algorithm.rollout_correction=token_truncate"],
     "algorithm.rollout_correction=token_truncate: allowed values are none, tis, icepop, "
     "seq_mask"),
    (["run", "vllm_importance_sampling_mode=token_mask"],
     "use algorithm.rollout_correction (token_truncate: tis"),
    (["run", "algorithm.rollout_correction=tis", "algorithm.rollout_correction_cap=0.5"],
     "algorithm.rollout_correction_cap=0.5: must be >= 1"),
    (["run", "algorithm.rollout_correction=icepop", "algorithm.rollout_correction_low=1.2"],
     "algorithm.rollout_correction_low=1.2, algorithm.rollout_correction_high=5.0: need 0 <= "
     "low <= 1 <= high"),
    (["run", *QUICK, "algorithm.dynamic_sampling=true", "algorithm.dynamic_sampling_key=acc"],
     "algorithm.dynamic_sampling_key=acc: the reward has no such component; use reward or one "
     "of accuracy, format"),
    # the supervised warm start: sizes, a task with solutions, the solution column
    (["run", "model.warm_start.data=toy:add", "model.warm_start.steps=0"],
     "model.warm_start.steps=0: must be >= 1"),
    (["run", "model.warm_start.data=toy:add", "model.warm_start.lr=0"],
     "model.warm_start.lr=0.0: must be > 0"),
    (["run", "model.warm_start.data=toy:sums"],
     "model.warm_start.data=toy:sums: this toy task has no solutions; toy tasks with solutions "
     "are add, add-vl, long-sums"),
    (["run", "model.warm_start.data={d}/missing.jsonl"],
     "model.warm_start.data={d}/missing.jsonl: file not found"),
    (["run", "model.warm_start.data={d}/firstrow.jsonl", "data.prompt_key=question"],
     "model.warm_start.solution_key=solution: model.warm_start.data={d}/firstrow.jsonl has no "
     "such column (columns: answer, question)"),
    (["run", "max_len=5000"], "exceeds the model context"),
    (["run", "algorithm.loss_agg_mode=foo"], "allowed values are seq-mean-token-mean"),
    (["run", "length.schedule=[[0,-3]]"], "length.schedule[0]: cap -3 must be > 0"),
    (["run", "hydra/launcher=nope"], "Could not find 'hydra/launcher/nope'"),
    (["run", "config={d}/missing.yaml"], "file not found"),
    (["run", "model.path={d}/nomodel"], "model.path={d}/nomodel: directory not found"),
    (["run", "data.train_files={d}/missing.jsonl"], "file not found"),
    (["run", *QUICK, "data.train_files={d}/broken.jsonl"], "broken.jsonl: line 2 is not valid"),
    (["run", *QUICK, "data.train_files={d}/nocol.jsonl"], "row 1 has no such column"),
    (["run", "reward.function={d}/missing.py:fn"], "missing.py not found"),
    (["run", *QUICK, "reward.function={d}/noimport.py:fn"], "No module named 'not_a_module_xyz'"),
    (["run", "reward.function=grpo_cli.rewards.math:nofn"], "has no function nofn"),
    (["run", "reward.function={d}/noimport.py:nofn"],
     "noimport.py has no function nofn (functions: fn)"),
    # The reward's return value is only seen on the first batch: the run has started then.
    (["run", *QUICK, "reward.function={d}/wrongtype.py:fn"], "reward 'overall' is str"),
    (["run", *QUICK, "reward.function={d}/short.py:fn"], "must return a list of 8 scores, got 1"),
    (["run", *QUICK, "reward.function={d}/nooverall.py:fn"], "has no 'overall' key"),
    # (where vLLM can run, this is a real run, not bad input)
    *([] if vllm_available() else [(["run", "rollout=vllm"],
                                    "rollout.backend=vllm needs vLLM: on GPUs")]),
    (["run", "rollout=vllm", "rollout.tensor_parallel_size=3"],
     "rollout.tensor_parallel_size=3 must divide the 1 ranks"),
    (["run", "trainer.nodes=2"], "trainer.nodes=2 with torchrun needs trainer.master_addr"),
    (["run", "trainer.launcher=deepspeed", "trainer.hostfile={d}/nohosts"],
     "trainer.hostfile={d}/nohosts: no such file"),
    (["run", "resume=nope"], "resume=nope: no run with that id"),
    (["run", "resume=../etc"], "invalid run id"),
    (["report", "no-such-run"], "no run or sweep 'no-such-run'"),
    (["report", "{d}/run1/sub"], "neither a grpo run directory nor a W&B offline run"),
    (["sweep", "--resume", "sweep-nope", "max_len=16,24"], "no manifest"),
    (["sweep", "{d}/missing.yaml"], "sweep file not found"),
    # every arm is checked before any starts, dry run included
    (["sweep", "--dry-run", "max_lenght=32,64"], "did you mean max_len?"),
    (["sweep", "max_lenght=32,64"], "did you mean max_len?"),
    (["sweep", "--dry-run", "max_len=32,64", "trainer.steps=ten"],
     "sweep arm 0 (max_len=32): trainer.steps: Value 'ten'"),
    (["sweep", "max_len=32,0", "trainer.steps=2"],
     "sweep arm 1 (max_len=0): data.max_response_length (max_len)=0"),
    (["sweep", "max_len=16,24", "trainer.save_freq=2"], "use trainer.save_every"),
    (["sweep", "max_len=16,24", "hydra/launcher=nope"], "Could not find 'hydra/launcher/nope'"),
]

# Checks that need no model, no data beyond a file's first row and no torch: they must come
# before anything heavy (a shadowing `torch` package that refuses to import proves it).
NO_TORCH = [c for c in CASES if c[0][0] == "sweep" or not any(
    a.startswith(("resume=", "report", "rollout=", "model.path", "trainer.nodes",
                  "trainer.launcher"))
    or a in QUICK for a in c[0])]


@pytest.fixture
def no_torch(tmp_path: Path) -> dict[str, str]:
    """An environment where `import torch` fails (a stand-in package first on the path)."""
    import os

    fake = tmp_path / "no_torch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('torch imported by a config check')\n")
    return {"PYTHONPATH": os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.parametrize(("argv", "expected"), CASES, ids=[" ".join(c[0][:1] + c[0][-1:])
                                                           for c in CASES])
def test_bad_input_is_one_line_exit_2(grpo, runs_dir: Path, files: Path, no_torch: dict[str, str],
                                      argv: list[str], expected: str) -> None:
    """Each case once; the checks that need no torch run where importing it fails, which
    proves they come before anything heavy."""
    args = [a.format(d=files) for a in argv]
    started = any(a.startswith("reward.function") and ("wrong" in a or "short" in a
                                                       or "overall" in a)
                  or a.startswith("algorithm.dynamic_sampling_key") for a in args)
    torchless = (argv, expected) in NO_TORCH
    res = grpo(*args, env=no_torch if torchless else None)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "torch imported" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and expected.format(d=files) in lines[-1]
    runs = [p for p in runs_dir.iterdir() if p.is_dir()] if runs_dir.exists() else []
    if started:  # stopped on the first batch: the run exists and is marked failed
        (run,) = runs
        assert '"status": "failed"' in (run / "meta.json").read_text()
    else:  # nothing loaded, nothing written, nothing else said
        assert len(lines) == 1, res.stderr[-2000:]
        assert runs == [], "bad input must fail before a run directory exists"


def test_a_good_config_is_checked_without_torch(grpo, no_torch: dict[str, str]) -> None:
    """`--cfg job` composes, types and validates the default and the VL experiment."""
    for args in ([], ["config=conf/experiment/toy_vl.yaml"]):
        res = grpo("run", *args, "--cfg", "job", env=no_torch)
        assert res.returncode == 0, res.stderr[-2000:]
        assert "micro_batch_size: 32" in res.stdout  # filled in: 16 prompts x 8 / 1 rank


def test_debug_shows_the_traceback(grpo) -> None:
    res = grpo("run", "--debug", "trainer.steps=ten")
    assert res.returncode == 2 and "Traceback" in res.stderr
