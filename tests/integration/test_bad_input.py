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
    (tmp_path / "run1" / "sub").mkdir(parents=True)
    return tmp_path


CASES = [
    # (argv, text the one line must contain); {d} is the fixture's directory
    (["run", "trainer.bogus=1"], "trainer.bogus"),
    (["run", "trainer.steps=ten"], "trainer.steps"),
    (["run", "max_len=0"], "data.max_response_length (max_len)=0: must be > 0"),
    (["run", "data.max_prompt_length=-5"], "data.max_prompt_length=-5: must be > 0"),
    (["run", "rollout.n=1"], "rollout.n=1"),
    (["run", "max_len=5000"], "exceeds the model context"),
    (["run", "algorithm.loss_agg_mode=foo"], "allowed values are seq-mean-token-mean"),
    (["run", "length.schedule=[[0,-3]]"], "length.schedule[0]: cap -3 must be > 0"),
    (["run", "hydra/launcher=nope"], "Could not find 'hydra/launcher/nope'"),
    (["run", "config={d}/missing.yaml"], "file not found"),
    (["run", "model.path={d}/nomodel"], "model.path={d}/nomodel: directory not found"),
    (["run", "data.train_files={d}/missing.jsonl"], "file not found"),
    (["run", *QUICK, "data.train_files={d}/broken.jsonl"], "broken.jsonl: line 2 is not valid"),
    (["run", *QUICK, "data.train_files={d}/nocol.jsonl"], "row 1 has no such column"),
    (["run", *QUICK, "reward.function={d}/missing.py:fn"], "missing.py not found"),
    (["run", *QUICK, "reward.function={d}/noimport.py:fn"], "No module named 'not_a_module_xyz'"),
    (["run", *QUICK, "reward.function=grpo_cli.rewards.math:nofn"], "has no function nofn"),
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
]


@pytest.mark.parametrize(("argv", "expected"), CASES, ids=[" ".join(c[0][:1] + c[0][-1:])
                                                           for c in CASES])
def test_bad_input_is_one_line_exit_2(grpo, runs_dir: Path, files: Path, argv: list[str],
                                      expected: str) -> None:
    args = [a.format(d=files) for a in argv]
    started = any(a.startswith("reward.function") and ("wrong" in a or "short" in a
                                                       or "overall" in a) for a in args)
    res = grpo(*args)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and expected.format(d=files) in lines[-1]
    runs = [p for p in runs_dir.iterdir() if p.is_dir()] if runs_dir.exists() else []
    if started:  # stopped on the first batch: the run exists and is marked failed
        (run,) = runs
        assert '"status": "failed"' in (run / "meta.json").read_text()
    else:  # nothing loaded, nothing written, nothing else said
        assert len(lines) == 1, res.stderr[-2000:]
        assert runs == [], "bad input must fail before a run directory exists"


def test_debug_shows_the_traceback(grpo) -> None:
    res = grpo("run", "--debug", "trainer.steps=ten")
    assert res.returncode == 2 and "Traceback" in res.stderr
