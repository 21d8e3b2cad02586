"""The training step end to end: the real loop (real DeepSpeed engine, the toy model, the hf
sampler) runs one step, and its parameter update must equal an independent computation from
nothing but the stored rollout rows (token ids, rewards) and the model before the step.

The reference below re-derives everything the step derives, from the formulas of
LITERATURE.md, without any grpo_cli code: truncation from the tokens (no EOS at the end),
group advantages, the loss mask, the loss weights over the whole global update batch, the
clipped surrogate and k3 KL, one plain autograd pass over every row (each row alone, no
padding), then torch's AdamW. AdamW runs with ``trainer.adam_eps=1``, which makes its first
step nearly linear in the gradient (update = -lr * g / (|g| + 1)), so a wrong scale of the
loss shows in the update instead of being normalised away.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import deepspeed  # noqa: F401  (imported at collection: forked test workers start warm)
import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo_cli.config.schema import TOY
from grpo_cli.models.load import resolve_model_path
from tests.helpers import ZERO3_SHARDED

N = 4  # rollout.n
PROMPTS = 4  # trainer.prompts_per_step
CAP = 24  # data.max_response_length: some completions end with EOS exactly here
COMMON = [
    "trainer.steps=1", "trainer.save_final=true", "logger.store_tokens=true",
    "logger.progress=false", "logger.wandb.mode=disabled", "trainer.val_every=0",
    f"rollout.n={N}", f"trainer.prompts_per_step={PROMPTS}", f"max_len={CAP}",
    "data.toy_size=64", "trainer.lr=0.5", "trainer.adam_eps=1.0", "trainer.grad_clip=0",
    "trainer.micro_batch_size=4", "seed=6",
]


def run_step(runs_dir: Path, overrides: list[str]) -> Path:
    """One real training step in this process, exactly as `grpo run` calls it."""
    from grpo_cli.startup import load_run_config
    from grpo_cli.train.loop import train

    cfg, resolved = load_run_config([*COMMON, *overrides, f"runs_dir={runs_dir}"])
    return runs_dir / train(cfg, resolved)


def knobs(run_dir: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text())


def rows_of(run_dir: Path) -> pd.DataFrame:
    parts = sorted((run_dir / "rollouts").glob("part-*.parquet"))
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


def weights_after(run_dir: Path) -> dict[str, torch.Tensor]:
    """The module weights DeepSpeed saved after step 0: whole for ZeRO 0-2, rebuilt from the
    ranks' fp32 shards for ZeRO-3."""
    path = run_dir / "checkpoints" / "step-000000" / "mp_rank_00_model_states.pt"
    if knobs(run_dir)["trainer"]["zero_stage"] < 3:
        return torch.load(path, map_location="cpu", weights_only=False)["module"]
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"),
                                                    tag="step-000000")


# --- the independent reference -------------------------------------------------------------

def truth_truncated(completions: list[list[int]], eos: set[int], cap: int) -> np.ndarray:
    """hf stops at the first EOS or at the cap: a completion without a final EOS was cut."""
    assert all(1 <= len(c) <= cap for c in completions)
    assert all(t not in eos for c in completions for t in c[:-1])  # EOS only ever last
    return np.array([c[-1] not in eos for c in completions])


def ref_advantages(rewards: np.ndarray, valid: np.ndarray, n: int, by_std: bool,
                   eps: float, estimator: str = "grpo") -> np.ndarray:
    out = np.zeros(len(rewards))
    for g in range(0, len(rewards), n):
        r, v = rewards[g : g + n].astype(np.float64), valid[g : g + n]
        if v.sum() < 2 or r[v].max() == r[v].min():
            continue  # no signal: all zero
        if estimator == "rloo":  # each minus the mean of the others
            a = np.array([x - np.delete(r[v], i).mean() for i, x in enumerate(r[v])])
        else:
            a = r[v] - r[v].mean()
        if by_std:
            a = a / (r[v].std(ddof=1) + eps)
        out[g : g + n][v] = a
    return out


def ref_batch(rows: pd.DataFrame, k: dict[str, Any], world: int
              ) -> tuple[list[int], np.ndarray, np.ndarray]:
    """The stored rows each rank's update batch holds (rank after rank) and whether each
    carries loss, plus every row's group flag. Without dynamic sampling: every row. With
    it, ranks hold equal blocks of the stored rows (every rank draws the same rounds);
    within a block, a group carries signal when its key is not constant (or its mean is
    inside the band), and the batch is the first prompts_per_step/world such groups,
    filled with the earliest others (no loss) when there are too few."""
    a, n = k["algorithm"], k["rollout"]["n"]
    if not a["dynamic_sampling"]:
        return list(range(len(rows))), np.ones(len(rows), bool), np.ones(len(rows), bool)
    want = k["trainer"]["prompts_per_step"] // world
    key = "reward" if a["dynamic_sampling_key"] == "reward" else a["dynamic_sampling_key"]
    low, high = a["dynamic_sampling_low"], a["dynamic_sampling_high"]
    block = len(rows) // world
    batch: list[int] = []
    carries: list[bool] = []
    flags = np.zeros(len(rows), bool)
    for r in range(world):
        groups = rows[key].to_numpy(np.float64)[r * block : (r + 1) * block].reshape(-1, n)
        if low is None and high is None:
            info = [bool(g.max() > g.min()) for g in groups]
        else:
            info = [bool((low is None or g.mean() > low) and (high is None or g.mean() < high))
                    for g in groups]
        good = [g for g, f in enumerate(info) if f][:want]
        filler = [g for g, f in enumerate(info) if not f][: want - len(good)]
        for g in sorted(good + filler):
            batch += [r * block + g * n + j for j in range(n)]
            carries += [info[g]] * n
        flags[r * block : (r + 1) * block] = np.repeat(info, n)
    return batch, np.array(carries), flags


def ref_is_weights(old: torch.Tensor, sampler: torch.Tensor, a: dict[str, Any]) -> torch.Tensor:
    """Per-token weight of one row [T] from the trainer's log-probs at the sampling weights
    and the sampler's, by the formulas of each correction."""
    ratio = torch.exp((old - sampler).clamp(-20, 20))
    mode, low, high = a["rollout_correction"], a["rollout_correction_low"], \
        a["rollout_correction_high"]
    if mode == "none":
        return torch.ones_like(ratio)
    if mode == "tis":
        return torch.clamp(ratio, max=a["rollout_correction_cap"])
    if mode == "icepop":
        return ratio * ((ratio >= low) & (ratio <= high))
    geo = math.exp(float((old - sampler).clamp(-20, 20).mean()))
    return torch.full_like(ratio, float(low <= geo <= high))


def ref_weights(lengths: list[int], carries: np.ndarray, mode: str, c: float) -> list[float]:
    """Per-token weight of each row (all tokens of a row weigh the same), global counts."""
    seqs = float(carries.sum())
    tokens = float(sum(n for n, k in zip(lengths, carries, strict=True) if k))
    out = []
    for n, k in zip(lengths, carries, strict=True):
        if not k:
            out.append(0.0)
        elif mode == "token-mean":
            out.append(1.0 / tokens)
        elif mode == "seq-mean-token-mean":
            out.append(1.0 / n / seqs)
        else:  # seq-mean-token-sum-norm
            out.append(1.0 / (seqs * c))
    return out


def row_logprobs(model: Any, prompt: list[int], completion: list[int],
                 temperature: float) -> torch.Tensor:
    """log p(completion_t | prompt, completion_<t) [T], one unpadded sequence."""
    ids = torch.tensor([prompt + completion])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None])[:, 0]


def row_entropy(model: Any, prompt: list[int], completion: list[int],
                temperature: float) -> torch.Tensor:
    """Entropy of the next-token distribution at each completion position [T]."""
    ids = torch.tensor([prompt + completion])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float() / temperature
    logp = torch.log_softmax(logits, -1)
    return -(logp.exp() * logp).sum(-1)


def reference_update(model: Any, rows: pd.DataFrame, k: dict[str, Any], world: int,
                     eos: set[int], model_path: str,
                     ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """AdamW updates of the plain model over the stored rows; returns the new weights and
    what was derived on the way (for the stored columns and logged metrics)."""
    a, t = k["algorithm"], k["trainer"]
    prompts = [list(p) for p in rows["prompt_tokens"]]
    comps = [list(c) for c in rows["completion_tokens"]]
    sampler = [torch.tensor(list(s), dtype=torch.float32) for s in rows["sampler_logprobs"]]
    cap, temp = k["data"]["max_response_length"], k["rollout"]["temperature"]
    truncated = truth_truncated(comps, eos, cap)
    valid = ~truncated if a["mask_truncated_in_adv"] else np.ones(len(rows), bool)
    adv = ref_advantages(rows["reward"].to_numpy(), valid, k["rollout"]["n"],
                         a["norm_adv_by_std"], a["adv_eps"], a["adv_estimator"])
    batch, carries_ds, informative = ref_batch(rows, k, world)
    carries = np.zeros(len(rows), bool)  # carries loss: in the batch, not a filler, not masked
    carries[batch] = carries_ds & (~truncated[batch] if a["mask_truncated"] else True)
    c = a["loss_norm_constant"] or cap
    ref = None
    if a["kl_coef"] > 0:
        ref = AutoModelForCausalLM.from_pretrained(model_path).eval()
    updates = t["updates_per_batch"]
    with torch.no_grad():
        old = {i: row_logprobs(model, prompts[i], comps[i], temp) for i in batch}
        is_w = {i: ref_is_weights(old[i], sampler[i], a) for i in batch}
        # mean entropy of softmax(logits / T) over the tokens that carry loss, before any update
        every = {i: row_entropy(model, prompts[i], comps[i], temp) for i in batch}
        ent = {i: e for i, e in every.items() if carries[i]}
        entropy = float(sum(e.sum() for e in ent.values()) / sum(len(e) for e in ent.values()))
        # each row's mean entropy, over its first and its last ceil(L/4) tokens
        quarters = {i: (float(e.mean()), float(e[:math.ceil(len(e) / 4)].mean()),
                        float(e[-math.ceil(len(e) / 4):].mean())) for i, e in every.items()}
        ref_lp = None if ref is None else {i: row_logprobs(ref, prompts[i], comps[i], temp)
                                           for i in batch}
    opt = torch.optim.AdamW(model.parameters(), lr=t["lr"], betas=tuple(t["betas"]),
                            eps=t["adam_eps"], weight_decay=t["weight_decay"])
    # Update u takes, on every rank, rank-local batch rows [u*m, (u+1)*m) (ranks hold
    # contiguous blocks); its loss counts span all ranks' rows of that update.
    per_rank = len(batch) // world
    m = per_rank // updates
    losses = []
    for u in range(updates):
        idx = [batch[r * per_rank + u * m + j] for r in range(world) for j in range(m)]
        w = ref_weights([len(comps[i]) for i in idx], carries[idx], a["loss_agg_mode"], c)
        opt.zero_grad()
        loss = torch.zeros(())
        for i, wi in zip(idx, w, strict=True):
            lp = row_logprobs(model, prompts[i], comps[i], temp)
            old_i = lp.detach() if updates == 1 else old[i]
            ratio = torch.exp(lp - old_i)
            clipped = torch.clamp(ratio, 1 - a["clip_ratio_low"], 1 + a["clip_ratio_high"])
            tok = -torch.minimum(ratio * adv[i], clipped * adv[i]) * is_w[i]
            if ref_lp is not None:
                d = ref_lp[i] - lp
                tok = tok + a["kl_coef"] * (torch.exp(d) - d - 1)
            loss = loss + wi * tok.sum()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    tokens = sum(len(comps[i]) for i in batch)
    masked = {i: int((is_w[i] == 0).sum()) for i in batch}
    logratio = {i: float((old[i] - sampler[i]).clamp(-20, 20).sum()) for i in batch}
    derived = {"truncated": truncated, "advantage": adv, "loss": float(np.mean(losses)),
               "entropy": entropy if updates == 1 else None, "batch": batch,
               "row_entropy": quarters if updates == 1 else None,
               "carries_ds": carries_ds, "informative": informative, "logratio": logratio,
               "lp_diff": sum(float((old[i] - sampler[i]).abs().sum()) for i in batch) / tokens,
               "weight_mean": sum(float(is_w[i].sum()) for i in batch) / tokens,
               "token_masked_frac": sum(masked.values()) / tokens,
               "seq_masked_frac": float(np.mean([masked[i] == len(comps[i]) for i in batch]))}
    return {n: p.detach().clone() for n, p in model.named_parameters()}, derived


# --- the tests ------------------------------------------------------------------------------

def check_update(run_dir: Path, perturbed: bool = False) -> dict[str, Any]:
    """Compare one finished one-step run with the reference; returns what was derived.
    ``perturbed``: the sampler's log-probs were moved off the trainer's on purpose."""
    k = knobs(run_dir)
    path = resolve_model_path(TOY, None)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    eos = {tok.eos_token_id} | set(np.atleast_1d(model.generation_config.eos_token_id or []))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows = rows_of(run_dir)
    world = k["trainer"]["gpus"] * k["trainer"]["nodes"]
    expected, derived = reference_update(model, rows, k, world, eos, path)
    np.testing.assert_array_equal(rows["truncated"].to_numpy(), derived["truncated"])
    np.testing.assert_allclose(rows["advantage"].to_numpy(), derived["advantage"], atol=1e-5)
    after = weights_after(run_dir)
    got = torch.cat([(after[n].detach().float() - before[n]).flatten() for n in expected])
    want = torch.cat([(expected[n] - before[n]).flatten() for n in expected])
    assert float(want.norm()) > 1e-3  # the step did move the weights
    rel = float((got - want).norm() / want.norm())
    assert rel < 1e-3, f"update differs from the reference by {rel:.2e} (relative L2)"
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["loss/pg"] == pytest.approx(derived["loss"], rel=1e-4, abs=1e-7)
    # the stored sampler log-probs against the trainer's at the weights that sampled
    assert metrics[0]["rollout/logprob_diff"] == pytest.approx(derived["lp_diff"], abs=1e-6)
    if not perturbed:  # the sampler drew with the configured temperature: the trainer's
        assert derived["lp_diff"] < 1e-5
    check_batch_columns(rows, metrics[0], derived, k)
    if derived["entropy"] is not None:  # one update: entropies at the weights that sampled
        assert metrics[0]["policy/entropy"] == pytest.approx(derived["entropy"], rel=1e-4)
    assert metrics[0]["train/skipped_updates"] == metrics[0]["train/skipped_updates_total"] == 0
    assert ("policy/kl" in metrics[0]) == (k["algorithm"]["kl_coef"] > 0)
    return derived


def check_entropy_columns(rows: pd.DataFrame, m: dict[str, Any], derived: dict[str, Any]
                          ) -> None:
    """Each batch row's mean entropy and its first/last-quarter means (rollout columns), and
    the step's entropy by outcome and position, against per-row autograd-free passes at the
    weights that sampled (one update per batch; later updates see moved weights)."""
    if derived["row_entropy"] is None:
        return
    batch = derived["batch"]
    want = np.array([derived["row_entropy"][i] for i in batch])  # [B, 3]
    cols = ("entropy", "entropy_first_quarter", "entropy_last_quarter")
    got = rows[list(cols)].to_numpy()
    # fp32 entropies of near-certain tokens (~1e-4 nats) differ by ~1e-5 between the
    # chunked forward and one log_softmax
    np.testing.assert_allclose(got[batch], want, rtol=1e-4, atol=2e-5)
    assert np.isnan(np.delete(got, batch, axis=0)).all()
    truncated = derived["truncated"][batch]
    correct = rows["correct"].to_numpy()[batch]
    for key, part in (("truncated", truncated), ("finished", ~truncated),
                      ("correct", correct >= 0.5), ("incorrect", correct < 0.5)):
        if part.any():
            assert m[f"entropy/{key}_mean"] == pytest.approx(want[part, 0].mean(), rel=1e-4,
                                                             abs=2e-5)
        else:
            assert f"entropy/{key}_mean" not in m
    assert m["entropy/first_quarter_mean"] == pytest.approx(want[:, 1].mean(), abs=2e-5)
    assert m["entropy/last_quarter_mean"] == pytest.approx(want[:, 2].mean(), abs=2e-5)


def check_batch_columns(rows: pd.DataFrame, m: dict[str, Any], derived: dict[str, Any],
                        k: dict[str, Any]) -> None:
    """What dynamic sampling kept and the correction's numbers, as stored and logged,
    against the reference's own derivation."""
    batch = derived["batch"]
    logratio = rows["logratio_sum"].to_numpy()
    assert np.isnan(np.delete(logratio, batch)).all()  # only the batch went through the update
    np.testing.assert_allclose(logratio[batch], [derived["logratio"][i] for i in batch],
                               atol=2e-4)
    check_entropy_columns(rows, m, derived)
    if k["algorithm"]["rollout_correction"] != "none":
        assert m["mismatch/weight_mean"] == pytest.approx(derived["weight_mean"], rel=1e-4)
        for key in ("token_masked_frac", "seq_masked_frac"):
            assert m[f"mismatch/{key}"] == pytest.approx(derived[key], abs=1e-6), key
    if not k["algorithm"]["dynamic_sampling"]:
        assert "trained" not in rows and "dynamic/rounds" not in m
        return
    n = k["rollout"]["n"]
    trained = np.zeros(len(rows), bool)
    trained[np.array(batch)[derived["carries_ds"]]] = True
    np.testing.assert_array_equal(rows["trained"].to_numpy(bool), trained)
    np.testing.assert_array_equal(rows["informative"].to_numpy(bool), derived["informative"])
    kept = int(trained.sum()) // n
    assert m["dynamic/groups_kept"] == kept
    assert m["dynamic/groups_short"] == k["trainer"]["prompts_per_step"] - kept
    assert m["dynamic/groups_sampled"] == len(rows) // n
    assert m["dynamic/dropped_frac"] == pytest.approx(1 - derived["informative"].mean())
    rounds = int(rows["round"].max()) + 1
    assert m["dynamic/rounds"] == rounds
    # the rounds stopped at the first one after which every rank held its share
    world = len(rows) // (rounds * k["trainer"]["prompts_per_step"] * n)
    want = k["trainer"]["prompts_per_step"] // world
    per_round = derived["informative"].reshape(world, rounds, want * n)[:, :, ::n].sum(2)
    enough = (per_round.cumsum(axis=1) >= want).all(axis=0)  # [rounds] all ranks filled
    assert not enough[:-1].any()
    assert enough[-1] or rounds == k["algorithm"]["dynamic_sampling_max_rounds"]


# The knobs that change the update, each value covered; CAP and seed give groups with
# finished and truncated completions and at least one EOS exactly at the cap.
SINGLE_RANK = {
    "grpo": ["algorithm.loss_agg_mode=seq-mean-token-mean"],
    "token-mean": ["algorithm.loss_agg_mode=token-mean", "algorithm.adv_eps=0.05"],
    "dr-grpo": ["algorithm=dr_grpo"],  # seq-mean-token-sum-norm at the cap, no std
    "dr-grpo-constant-temp": ["algorithm=dr_grpo", "algorithm.loss_norm_constant=40",
                              "rollout.temperature=0.7"],
    "no-std-mask-trunc": ["algorithm.norm_adv_by_std=false", "algorithm.mask_truncated=true"],
    "filter-in-adv": ["algorithm.mask_truncated_in_adv=true", "algorithm.loss_agg_mode=token-mean"],
    "rloo-filter-in-adv": ["algorithm.adv_estimator=rloo", "algorithm.norm_adv_by_std=false",
                           "algorithm.mask_truncated_in_adv=true"],
    "both-masks": ["algorithm.mask_truncated=true", "algorithm.mask_truncated_in_adv=true",
                   "algorithm.loss_agg_mode=seq-mean-token-sum-norm"],
    "two-updates-kl-temp": ["trainer.updates_per_batch=2", "algorithm.kl_coef=0.5",
                            "rollout.temperature=0.8", "algorithm.clip_ratio_low=0.02",
                            "algorithm.clip_ratio_high=0.1"],
    "zero2-one-micro": ["trainer.zero_stage=2", "trainer.micro_batch_size=16",
                        "algorithm=dapo"],
    "dynamic-one-round-short": ["algorithm.dynamic_sampling=true",
                                "algorithm.dynamic_sampling_max_rounds=1"],
    "dynamic-band-accuracy-two-updates": [
        "algorithm.dynamic_sampling=true", "algorithm.dynamic_sampling_key=accuracy",
        "algorithm.dynamic_sampling_low=0.3", "algorithm.dynamic_sampling_max_rounds=3",
        "trainer.updates_per_batch=2"],
    "checkpointed-two-updates-kl": ["model.gradient_checkpointing=true",
                                    "trainer.updates_per_batch=2", "algorithm.kl_coef=0.5",
                                    "algorithm.clip_ratio_low=0.02",
                                    "algorithm.clip_ratio_high=0.1"],
}


@pytest.mark.parametrize("name", list(SINGLE_RANK))
def test_one_step_equals_the_reference(runs_dir: Path, name: str) -> None:
    run_dir = run_step(runs_dir, SINGLE_RANK[name])
    derived = check_update(run_dir)
    truncated = derived["truncated"]
    assert truncated.any() and not truncated.all()  # both kinds are in the batch
    metrics = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    if "trainer.updates_per_batch=2" in SINGLE_RANK[name]:  # the second update clips some
        assert metrics["policy/clip_frac"] > 0
    if name == "dynamic-one-round-short":  # one round had too few: the batch was filled
        assert metrics["dynamic/groups_short"] > 0
    if name == "dynamic-band-accuracy-two-updates":  # it took more rounds to fill
        assert metrics["dynamic/rounds"] > 1


def perturb_sampler(monkeypatch: pytest.MonkeyPatch, scale: float) -> None:
    """A controlled sampler-trainer mismatch: the hf sampler reports each token's log-prob
    moved by scale * sin(1.7 t + token id), as a bf16 engine's would be, by other amounts."""
    from grpo_cli.rollout import hf

    real = hf.HFRollout.generate

    def generate(self: Any, request: Any) -> Any:
        out = real(self, request)
        for c in out.completions:
            c.logprobs = [lp + scale * math.sin(1.7 * t + tok)
                          for t, (lp, tok) in enumerate(zip(c.logprobs, c.token_ids, strict=True))]
        return out

    monkeypatch.setattr(hf.HFRollout, "generate", generate)


@pytest.mark.parametrize("extra", [
    ["algorithm.rollout_correction=tis", "algorithm.rollout_correction_cap=1.2"],
    ["algorithm.rollout_correction=icepop", "algorithm.rollout_correction_low=0.8",
     "algorithm.rollout_correction_high=1.25", "algorithm.loss_agg_mode=token-mean"],
    ["algorithm.rollout_correction=seq_mask", "algorithm.rollout_correction_low=0.97",
     "algorithm.rollout_correction_high=1.03", "trainer.updates_per_batch=2",
     "algorithm.kl_coef=0.5", "algorithm.dynamic_sampling=true"],
    ["algorithm.rollout_correction=none"],
], ids=["tis", "icepop-token-mean", "seq-mask-two-updates-kl-dynamic", "none"])
def test_mismatch_correction_equals_the_reference(runs_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                  extra: list[str]) -> None:
    """With the sampler's log-probs moved off the trainer's by a known amount, each
    correction's update equals the reference's (weights from the stored sampler log-probs
    and the trainer's own at the weights that sampled), and so do its logged numbers; each
    mode zeroes or truncates some tokens and keeps others."""
    perturb_sampler(monkeypatch, 0.4)
    run_dir = run_step(runs_dir, extra)
    derived = check_update(run_dir, perturbed=True)
    assert derived["lp_diff"] > 0.1  # the mismatch is there
    m = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    if "algorithm.rollout_correction=none" in extra:
        assert "mismatch/weight_mean" not in m
    elif "algorithm.rollout_correction=tis" in extra:
        assert derived["token_masked_frac"] == 0 and 0.5 < derived["weight_mean"] < 1.0
    else:
        assert 0 < derived["token_masked_frac"] < 1
    assert -1 <= m["mismatch/logratio_length_spearman"] <= 1


@pytest.mark.parametrize("drop", [True, False], ids=["rows-leave-at-eos", "generate"])
def test_both_hf_samplers_train_like_the_reference(runs_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                   drop: bool) -> None:
    """rollout.drop_finished (the default, true): the step samples with rollout/decode.py (a
    spy counts its calls and passes them on to it); false: with transformers generate, and
    the loop is never called. Either way the update on those rows equals the reference, with
    the sampler's log-probs the trainer's (check_update) at a temperature below 1."""
    from grpo_cli.rollout import hf

    calls: list[int] = []
    real = hf.sample_dropping_finished

    def spy(model: Any, input_ids: torch.Tensor, *args: Any) -> Any:
        calls.append(input_ids.shape[0])
        return real(model, input_ids, *args)

    monkeypatch.setattr(hf, "sample_dropping_finished", spy)
    run_dir = run_step(runs_dir, ["rollout.temperature=0.7",
                                  f"rollout.drop_finished={str(drop).lower()}"])
    assert sum(calls) == (PROMPTS * N if drop else 0)  # which sampler made the completions
    derived = check_update(run_dir)
    assert derived["truncated"].any() and not derived["truncated"].all()


def test_micro_batches_grouped_by_length_are_cut_and_train_like_the_reference(
        runs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """trainer.group_by_length=true: every micro-batch of the update is cut to its own rows
    (a spy on update.take records the widths it hands the forward pass), together they hold
    fewer padded positions than the uncut batch, and the update (two of them, with KL, so the
    old and reference log-probs go through the same micro-batches) equals the reference."""
    from grpo_cli.train import update

    shapes: list[tuple[int, int, int]] = []  # (rows, width, full width) per micro-batch
    real = update.take

    def spy(b: Any, idx: torch.Tensor, trim: bool) -> Any:
        m = real(b, idx, trim)
        shapes.append((len(idx), m.input_ids.shape[1], b.input_ids.shape[1]))
        return m

    monkeypatch.setattr(update, "take", spy)
    run_dir = run_step(runs_dir, ["trainer.group_by_length=true", "trainer.updates_per_batch=2",
                                  "algorithm.kl_coef=0.5", "trainer.micro_batch_size=2"])
    check_update(run_dir)
    assert sum(n for n, _, _ in shapes) == PROMPTS * N  # each row once (two updates of 8)
    assert all(w <= full for _, w, full in shapes)
    assert sum(n * w for n, w, _ in shapes) < sum(n * full for n, _, full in shapes)


def test_the_batch_holds_eos_exactly_at_the_cap(runs_dir: Path) -> None:
    """The case `length >= cap` gets wrong: it must occur, and count as finished."""
    rows = rows_of(run_step(runs_dir, []))
    at_cap = rows["response_length"] == CAP
    assert (at_cap & ~rows["truncated"]).any() and (at_cap & rows["truncated"]).any()


@pytest.mark.parametrize("extra", [
    ["algorithm.loss_agg_mode=token-mean", "algorithm.mask_truncated=true"],
    ["algorithm=dr_grpo", "trainer.zero_stage=2", "trainer.updates_per_batch=2",
     "trainer.micro_batch_size=2", "trainer.group_by_length=true"],
    [*ZERO3_SHARDED, "trainer.updates_per_batch=2", "algorithm.kl_coef=0.5",
     "trainer.micro_batch_size=2"],
    ["algorithm=dapo", "algorithm.dynamic_sampling_max_rounds=3", "trainer.updates_per_batch=2",
     "trainer.micro_batch_size=2"],
], ids=["token-mean-masked", "dr-grpo-zero2-two-updates-by-length", "zero3-sharded-two-updates-kl",
        "dapo-dynamic-sampling-two-updates"])
def test_two_ranks_equal_the_reference(grpo, runs_dir: Path, extra: list[str]) -> None:
    """Two CPU ranks (torchrun, gloo): counts are global, DeepSpeed's rank average undone.
    At ZeRO-3 every tensor is sharded (policy and reference): sampling, the old and
    reference log-probs and the update all run on gathered shards. With dynamic sampling
    both ranks draw the same rounds, each fills its own share (check_batch_columns)."""
    args = [a for a in COMMON if not a.startswith("logger.wandb")]
    res = grpo("run", *args, *extra, "trainer.gpus=2", "logger.wandb.mode=disabled",
               timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    (run_dir,) = [p for p in runs_dir.iterdir() if p.is_dir()]
    check_update(run_dir)
    if "algorithm=dapo" in extra:  # the case drew more than one round
        assert rows_of(run_dir)["round"].max() >= 1

