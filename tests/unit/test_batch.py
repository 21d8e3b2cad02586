"""Training batches: packing rows, micro-batches grouped by length and cut to their widths,
and the forward pass over a cut micro-batch against the whole batch (the toy model)."""

from __future__ import annotations

import pytest
import torch

from grpo_cli.rollout.base import Completion
from grpo_cli.train.batch import Batch, forward_logprobs, make_batch, micro_batches, take

PAD = 0
# (prompt length, completion length, truncated) of six rows: widths 7 and 9 overall
ROWS = [(3, 2, False), (7, 9, True), (5, 4, False), (2, 9, False), (6, 1, False), (4, 6, True)]


def rows_batch(vocab: int = 200) -> Batch:
    g = torch.Generator().manual_seed(0)
    prompts, comps = [], []
    for i, (p, c, cut) in enumerate(ROWS):
        prompts.append(torch.randint(2, vocab, (p,), generator=g).tolist())
        comps.append(Completion(i, 0, torch.randint(2, vocab, (c,), generator=g).tolist(),
                                [-0.1 * (k + 1) for k in range(c)], "length" if cut else "stop"))
    return make_batch(prompts, comps, torch.arange(len(ROWS), dtype=torch.float32), PAD,
                      mask_truncated=True)


def real_tokens(b: Batch, i: int) -> list[int]:
    return b.input_ids[i][b.attention_mask[i].bool()].tolist()


def test_consecutive_micro_batches_keep_the_row_order() -> None:
    b = rows_batch()
    parts = micro_batches(b, slice(1, 6), 2, by_length=False)
    assert [p.tolist() for p in parts] == [[1, 2], [3, 4], [5]]


def test_micro_batches_by_length_hold_similar_rows_longest_first() -> None:
    b = rows_batch()
    parts = micro_batches(b, slice(0, 6), 2, by_length=True)
    assert [p.tolist() for p in parts] == [[1, 3], [5, 2], [4, 0]]  # 16 11 | 10 9 | 7 5 tokens
    # an update's slice: only its own rows, each once
    assert sorted(torch.cat(micro_batches(b, slice(2, 6), 3, True)).tolist()) == [2, 3, 4, 5]


def test_a_cut_micro_batch_keeps_every_real_token_where_it_was() -> None:
    b = rows_batch()
    idx = torch.tensor([0, 4, 2])  # prompts 3, 6, 5; completions 2, 1, 4
    m = take(b, idx, trim=True)
    assert m.prompt_width == 6 and m.completion_ids.shape == (3, 4)
    assert m.input_ids.shape == (3, 10)
    for row, i in enumerate(idx.tolist()):
        assert real_tokens(m, row) == real_tokens(b, i)
        real = b.attention_mask[i].bool()
        assert m.position_ids[row][m.attention_mask[row].bool()].tolist() == \
            b.position_ids[i][real].tolist()
        assert m.loss_mask[row].sum() == b.loss_mask[i].sum()
        assert m.sampling_logprobs[row].sum() == pytest.approx(float(b.sampling_logprobs[i].sum()))
    assert m.advantages.tolist() == [0.0, 4.0, 2.0]
    whole = take(b, idx, trim=False)  # uncut: the batch's own widths
    assert whole.prompt_width == b.prompt_width and whole.input_ids.shape == (3, 16)


def test_the_forward_pass_over_a_cut_micro_batch_equals_the_whole_batch() -> None:
    """Log-probs and entropies of the real completion tokens are those of the uncut batch
    (SDPA over a narrower width: equal to float rounding); the LM head sees only the last
    T + 1 positions."""
    from transformers import AutoModelForCausalLM

    from grpo_cli.config.schema import TOY
    from grpo_cli.models.load import resolve_model_path

    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(TOY)).eval()
    head: list[tuple[int, ...]] = []  # the LM head's output shape at each forward pass
    model.get_output_embeddings().register_forward_hook(
        lambda _mod, _inp, out: head.append(tuple(out.shape)))
    b = rows_batch(model.config.vocab_size)
    with torch.no_grad():
        full_lp, full_ent = forward_logprobs(model, b, 0.7, with_entropy=True)  # [6, 9]
        width = b.completion_ids.shape[1]
        assert head == [(6, width + 1, model.config.vocab_size)] and \
            b.input_ids.shape[1] > width + 1  # not the prompt's positions
        for idx in micro_batches(b, slice(0, 6), 2, by_length=True):
            m = take(b, idx, trim=True)
            lp, ent = forward_logprobs(model, m, 0.7, with_entropy=True)  # [2, t]
            assert lp.shape == m.completion_ids.shape
            assert head[-1] == (2, m.completion_ids.shape[1] + 1, model.config.vocab_size)
            keep = m.attention_mask[:, m.prompt_width:].bool()  # [2, t]
            want = full_lp[idx, : lp.shape[1]]
            torch.testing.assert_close(lp[keep], want[keep], atol=1e-5, rtol=1e-5)
            assert ent is not None and full_ent is not None
            torch.testing.assert_close(ent[keep], full_ent[idx, : lp.shape[1]][keep],
                                       atol=1e-5, rtol=1e-5)
