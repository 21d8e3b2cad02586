"""Config composition, aliases, typing and cross-field validation (real Hydra compose)."""

from __future__ import annotations

from pathlib import Path

import pytest

from grpo_cli.config.loader import compose, conf_dir, parse_args, to_run_config
from grpo_cli.config.validate import val_cap, validate
from grpo_cli.errors import ConfigError
from grpo_cli.startup import load_run_config
from grpo_cli.sweep import plan

CONF = conf_dir()
SWEEPS = CONF.parent / "sweeps"
GROUPS = ["model", "data", "rollout", "algorithm", "reward", "length", "trainer", "logger"]


def group_options() -> list[tuple[str, str]]:
    return [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


def experiments() -> list[Path]:
    return sorted((CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize(("group", "option"), group_options())
def test_every_group_option_composes_and_validates(group: str, option: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # vLLM's GPU build is the one thing assumed here (it is not in this venv); every other
    # check runs. The CPU build's checks are in test_vllm_settings.py.
    monkeypatch.setattr("grpo_cli.rollout.vllm_platform", lambda: "cuda")
    cfg, resolved = load_run_config([f"{group}={option}"])
    assert resolved[group] is not None


@pytest.mark.parametrize("path", experiments(), ids=lambda p: p.stem)
def test_every_experiment_composes_and_validates(path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and f"config=conf/experiment/{path.name}" in first, (
        f"{path.name} must open with the command that runs it")
    raw = compose([f"config={path}"])
    assert raw.data.max_response_length > 0
    # Validate with the experiment's own ranks (trainer.gpus x trainer.nodes); the GPU build
    # of vLLM is assumed for the GPU recipes, and every other check runs.
    monkeypatch.setattr("grpo_cli.rollout.vllm_platform", lambda: "cuda")
    cfg = to_run_config(raw)
    validate(cfg, world=cfg.trainer.gpus * cfg.trainer.nodes)


@pytest.mark.parametrize("path", sorted(SWEEPS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_sweep_file_plans(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    assert first == f"# grpo sweep sweeps/{path.name}"
    sweep = plan([str(path)], sweep_id="sweep-test", runs_dir="/tmp/grpo-plan-only")
    assert len(sweep.arms) >= 2
    assert all(arm.overrides for arm in sweep.arms)


def test_max_len_alias_and_order_of_overrides(tmp_path: Path) -> None:
    exp = tmp_path / "exp.yaml"
    exp.write_text("# my experiment\ndefaults:\n  - override /algorithm: dapo\n"
                   "data:\n  max_response_length: 40\ntrainer:\n  steps: 7\n")
    cfg, _ = load_run_config([f"config={exp}", "max_len=32"])
    assert cfg.data.max_response_length == 32  # command line wins over the experiment
    assert cfg.trainer.steps == 7
    assert cfg.algorithm.loss_agg_mode == "token-mean" and cfg.algorithm.mask_truncated
    assert exp.read_text().startswith("# my experiment")  # the user's file is untouched


def test_dapo_samples_dynamically_and_other_frameworks_names_map_to_the_keys() -> None:
    cfg, _ = load_run_config(["algorithm=dapo"])
    a = cfg.algorithm
    assert a.dynamic_sampling and a.dynamic_sampling_key == "reward"
    assert a.dynamic_sampling_max_rounds == 10 and a.rollout_correction == "none"
    cfg, _ = load_run_config([  # EasyR1's online filtering, veRL's filter_groups
        "algorithm.online_filtering=true", "algorithm.filter_key=accuracy",
        "algorithm.filter_low=0.01", "algorithm.filter_high=0.99",
        "algorithm.filter_groups.max_num_gen_batches=3"])
    a = cfg.algorithm
    assert (a.dynamic_sampling, a.dynamic_sampling_key, a.dynamic_sampling_low,
            a.dynamic_sampling_high, a.dynamic_sampling_max_rounds) == (True, "accuracy", 0.01,
                                                                        0.99, 3)
    cfg, _ = load_run_config(["algorithm.filter_groups.enable=true",
                              "trainer.max_try_make_batch=5"])
    assert cfg.algorithm.dynamic_sampling and cfg.algorithm.dynamic_sampling_max_rounds == 5


@pytest.mark.parametrize(("args", "band"), [
    (["algorithm.rollout_correction=icepop"], (0.5, 5.0)),  # IcePop's published band
    (["algorithm.rollout_correction=seq_mask"], (0.999, 1.001)),  # veRL's geometric one
    (["algorithm.rollout_correction=icepop", "algorithm.rollout_correction_low=0.8"],
     (0.8, 5.0)),
    (["algorithm.rollout_correction=seq_mask",
      "algorithm.rollout_correction.rollout_rs_threshold_lower=0.99",
      "algorithm.rollout_correction.rollout_rs_threshold=1.02"], (0.99, 1.02)),
    (["algorithm.rollout_correction=tis"], (None, None)),
])
def test_a_masking_correction_gets_its_published_band_unless_set(
        args: list[str], band: tuple[float | None, float | None]) -> None:
    cfg, _ = load_run_config(args)
    a = cfg.algorithm
    assert (a.rollout_correction_low, a.rollout_correction_high) == band
    cfg, _ = load_run_config(["algorithm.rollout_correction=tis",
                              "vllm_importance_sampling_cap=3.0"])
    assert cfg.algorithm.rollout_correction_cap == 3.0


def test_parse_args_rejects_non_override() -> None:
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_args(["trainer.steps"])


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["trainer.nope=1"], "trainer.nope"),
        (["trainer.steps=abc"], "trainer.steps"),
        (["rollout.n=1"], "rollout.n=1"),
        (["max_len=0"], "max_response_length"),
        (["max_len=100000"], "exceeds the model context"),
        (["algorithm.loss_agg_mode=seq-sum"], "allowed values are seq-mean-token-mean"),
        (["trainer.micro_batch_size=7"], "trainer.micro_batch_size=7"),
        (["trainer.updates_per_batch=5"], "trainer.updates_per_batch=5"),
        (["logger.wandb.mode=cloud"], "logger.wandb.mode=cloud"),
        (["trainer.zero_stage=4"], "trainer.zero_stage=4"),
        (["config=/nonexistent/exp.yaml"], "config=/nonexistent/exp.yaml: file not found"),
        (["data.train_files=/nonexistent.jsonl"], "data.train_files=/nonexistent.jsonl"),
        (["data.train_files=toy:mul"], "toy tasks are"),
        (["model.path=/nonexistent/model"], "model.path=/nonexistent/model"),
        (["length.schedule=[[0,16],[5,0]]"], "length.schedule"),
        (["rollout.backend=sglang"], "rollout.backend=sglang"),
        (["rollout=vllm", "rollout.sleep_level=3"], "rollout.sleep_level=3: allowed 0-2"),
        (["rollout=vllm", "rollout.gpu_memory_utilization=1.0"],
         "rollout.gpu_memory_utilization=1.0: must be in"),
        (["rollout.top_p=1.5"], r"rollout.top_p=1.5: must be in \(0, 1\]"),
        (["rollout.top_p=0"], "rollout.top_p=0.0: must be in"),
        (["rollout.temperature=0"], "rollout.temperature=0.0: must be > 0"),
        (["rollout.n=1"], "rollout.n=1: GRPO needs at least 2"),
        (["trainer.adam_eps=0"], "trainer.adam_eps=0.0: must be > 0"),
        (["trainer.grad_clip=-1"], "trainer.grad_clip=-1.0: must be >= 0"),
        (["trainer.lr=0"], "trainer.lr=0.0: must be > 0"),
        (["trainer.deepspeed.zero_optimization.stage=3"],
         "trainer.deepspeed.zero_optimization.stage: set by trainer.zero_stage"),
        (["trainer.deepspeed.bf16={enabled: true}"], "trainer.deepspeed.bf16: set by model.dtype"),
        (["trainer.deepspeed.gradient_accumulation_steps=4"],
         "gradient_accumulation_steps: set by trainer.micro_batch_size"),
        (["trainer.deepspeed.zero_optimization=3"],
         "trainer.deepspeed.zero_optimization=3: expected a mapping"),
    ],
)
def test_bad_config_names_the_key(args: list[str], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern.replace("[", r"\[")):
        load_run_config(args)


def test_a_quoted_prompt_template_keeps_its_braces_spaces_and_colon() -> None:
    """What the one-line error for an unquoted template tells the user to type."""
    cfg, _ = load_run_config(['data.prompt_template="{problem} Answer:"'])
    assert cfg.data.prompt_template == "{problem} Answer:"


def test_prompts_must_split_across_ranks() -> None:
    cfg, _ = load_run_config(["trainer.prompts_per_step=8"])
    validate(cfg, world=2)
    with pytest.raises(ConfigError, match="not divisible by the 3 ranks"):
        validate(cfg, world=3)


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["length=overlong", "length.overlong_buffer=100"], "length.overlong_buffer=100"),
        (["length.penalty=exp"], "length.penalty=exp"),
        (["length.schedule_mode=cubic"], "length.schedule_mode=cubic"),
        (["trainer.val_every=5", "val.max_len=4000"], "val.max_len=4000"),
        (["algorithm.gfpo_keep=9"], r"algorithm.gfpo_keep=9: 0 \(off\) or 2..rollout.n \(8\)"),
        (["algorithm.gfpo_keep=1"], "algorithm.gfpo_keep=1"),
        (["algorithm.gfpo_metric=tokens"], "algorithm.gfpo_metric=tokens: allowed values"),
        (["length.penalty=l1_exact"], "length.penalty=l1_exact needs a budget.*"
                                      "data.length_budget"),
        (["data.length_budget=[0,5]"], r"data.length_budget=\[0, 5\]: expected \[min, max\]"),
        (["data.length_budget=[10,5]"], r"data.length_budget=\[10, 5\]"),
        (["data.length_budget=[4,8]", "data.length_budget_template='N={budget}'"],
         "data.length_budget_template='N={budget}': must contain {prompt} and {budget}"),
        (["data.length_budget=[4,8]", "data.length_budget_template='{prompt} {x} {budget}'"],
         "data.length_budget_template"),
        (["length.stop_penalty_coef=0.5", "length.stop_penalty_value=0"],
         "length.stop_penalty_coef and length.stop_penalty_value: set one, not both"),
        (["length.stop_penalty_coef=1.5"],
         r"length.stop_penalty_coef=1.5: must be in \[0, 1\]"),
        (["length.stop_penalty_coef=-0.5"], "length.stop_penalty_coef=-0.5"),
        (["algorithm.adv_estimator=ppo"], "algorithm.adv_estimator=ppo: allowed values"),
        (["algorithm.adv_estimator=rloo"], "algorithm.adv_estimator=rloo: RLOO does not "
                                           "divide by the group std"),
        (["length=arora_zanette", "algorithm.norm_adv_by_std=true"],
         "set algorithm.norm_adv_by_std=false"),
        (["length.schedule_mode=adaptive"], "length.schedule_mode=adaptive needs length.rounds"),
        (["length.rounds=[24]"], r"length.rounds=\[24\]: needs length.schedule_mode=adaptive"),
        (["length=thinkprune", "max_len=16"], r"length.rounds=\[24, 16\]: each cap must be "
                                              "below the one before, starting below max_len=16"),
        (["length=thinkprune", "length.rounds=[24,28]"], "each cap must be below"),
        (["length=thinkprune", "length.schedule=[[0,32]]"], "length.schedule: not used with"),
        (["length=thinkprune", "length.round_clip_threshold=0"], "length.round_clip_threshold"),
        (["length=thinkprune", "length.round_min_steps=0"], "length.round_min_steps=0"),
        (["length=thinkprune", "length.rounds=[24,0]"], "length.rounds"),
        (["length.arora_zanette.alpha=2"], "length.arora_zanette.alpha=2.0: must be in"),
        (["length.shorter_better.beta=-1"], "length.shorter_better.beta=-1.0: must be >= 0"),
        (["length.l1.delta=2"], "length.l1.delta=2.0"),
    ],
)
def test_bad_length_controls(args: list[str], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_run_config(args)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["max_len=32"], 128),  # 4x the training cap
        (["max_len=160"], 512 - 64),  # 4x would not fit the toy's 512-token context
        (["max_len=32", "length.schedule=[[0,32],[10,64]]"], 256),  # the largest stage counts
        (["max_len=160", "val.max_len=200"], 200),  # an explicit cap wins
        (["max_len=40", "length=thinkprune"], 160),  # adaptive rounds lie below max_len
    ],
)
def test_validation_probe_cap(args: list[str], expected: int) -> None:
    cfg, _ = load_run_config(["trainer.val_every=5", *args])
    assert val_cap(cfg) == expected


def test_length_method_options_set_what_their_papers_need() -> None:
    cfg, _ = load_run_config(["length=gfpo"])
    assert (cfg.rollout.n, cfg.algorithm.gfpo_keep, cfg.algorithm.gfpo_metric) == \
        (16, 8, "length")
    assert cfg.algorithm.loss_agg_mode == "token-mean"  # GFPO trains with DAPO's loss
    cfg, _ = load_run_config(["length=l1_max", "data.length_budget=[4,12]", "max_len=24"])
    assert cfg.length.penalty == "l1_max" and cfg.data.length_budget == [4, 12]
    assert cfg.data.max_response_length == 24
    cfg, _ = load_run_config(["length=arora_zanette"])  # RLOO, no std, n = 8
    assert (cfg.algorithm.adv_estimator, cfg.algorithm.norm_adv_by_std, cfg.rollout.n) == \
        ("rloo", False, 8)
    cfg, _ = load_run_config(["length=arora_zanette", "algorithm.adv_estimator=grpo",
                              "algorithm.norm_adv_by_std=true"])  # the GRPO ablation
    assert cfg.length.penalty == "arora_zanette" and cfg.algorithm.adv_estimator == "grpo"
    cfg, _ = load_run_config(["algorithm=dapo", "length=arora_zanette"])  # length file wins
    assert (cfg.algorithm.adv_estimator, cfg.algorithm.loss_agg_mode) == ("rloo", "token-mean")
    cfg, _ = load_run_config(["length=l1_max"])
    assert "Think for maximum {budget} tokens." in cfg.data.length_budget_template
    cfg, _ = load_run_config(["length=thinkprune"])
    assert cfg.length.schedule_mode == "adaptive" and cfg.length.rounds == [24, 16]
    assert cfg.length.stop_penalty_value == 0.0  # the hard cap, whatever the reward
    # the group-option files open with the command that uses them
    for name in ("shorter_better", "arora_zanette", "l1_exact", "l1_max", "gfpo",
                 "stop_penalty", "thinkprune", "kimi"):
        head = (CONF / "length" / f"{name}.yaml").read_text().splitlines()[:2]
        assert f"# grpo run length={name}" in head, name


def test_deepspeed_entries_merge_over_the_generated_config() -> None:
    """trainer.deepspeed adds and replaces single entries; the rest of a section stays."""
    from grpo_cli.train.engine import ds_config

    cfg, _ = load_run_config(["trainer.zero_stage=3", "trainer.deepspeed={zero_optimization: "
                              "{stage3_param_persistence_threshold: 0}, steps_per_print: 5}"])
    ds = ds_config(cfg, 1)
    assert ds["zero_optimization"] == {"stage": 3, "stage3_param_persistence_threshold": 0,
                                       "stage3_gather_16bit_weights_on_model_save": True}
    assert ds["steps_per_print"] == 5
    assert ds["gradient_clipping"] == cfg.trainer.grad_clip
