"""The embedded vision-language toy: a tiny Qwen2.5-VL grown from the text toy, built locally.

The language model *is* the warmed-up text toy (its weights copied unchanged: for text
tokens Qwen2.5-VL's multimodal rope with equal t/h/w positions is exactly the 1-D rope the
toy was trained with), so the VL toy solves the toy sums from the prompt text from step 0 and
RL shows the same length dynamics. Next to it sits a freshly initialised 2-block vision tower
whose merger output starts small (image features perturb, but do not wreck, the language
model). The directory is a plain HF checkpoint: ``Qwen2_5_VLForConditionalGeneration``,
``Qwen2_5_VLProcessor`` (image processor + the toy tokenizer with Qwen's vision tokens) and a
chat template that renders image items as ``<|vision_start|><|image_pad|><|vision_end|>``,
so transformers (and vLLM) load it unchanged. Built in seconds, deterministically, into the
user cache on first use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from grpo_cli.models.cache import build_once, cache_root

VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD = (
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
# Images are resized to this many pixels (a 112x28 strip: 8x2 patches of 14 -> 4 tokens).
IMAGE_PIXELS = 112 * 28
BUILD_VERSION = 1  # bump when the recipe changes: the cache key
# Text positions use all three rope sections equally; 4 + 6 + 6 = head_dim 32 / 2.
MROPE_SECTION = [4, 6, 6]
VISION_DEPTH, VISION_HIDDEN, VISION_HEADS, VISION_INTERMEDIATE = 2, 64, 2, 128
MERGER_OUT_SCALE = 0.05  # the merger's last layer starts small
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set text = message['content'] -%}"
    "{%- else -%}{%- set text = namespace(s='') -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' or 'image' in item -%}"
    "{%- set text.s = text.s + '" + VISION_START + IMAGE_PAD + VISION_END + "' -%}"
    "{%- elif item['type'] == 'text' -%}{%- set text.s = text.s + item['text'] -%}"
    "{%- endif -%}{%- endfor -%}{%- set text = text.s -%}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{{ text }}{{ eos_token }}"
    "{%- else -%}{{ text }}{{ '\\n' }}{%- endif -%}"
    "{%- endfor -%}"
)


def toy_vl_cache_dir() -> Path:
    return cache_root() / f"toy-qwen2_5-vl-v{BUILD_VERSION}"


def build_toy_vl_model(out_dir: Path | str, seed: int = 0) -> Path:
    """Write the VL toy (model, processor, tokenizer) to ``out_dir``; deterministic in seed."""
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        GenerationConfig,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    from grpo_cli.models.toy import ensure_toy_model

    text_dir = ensure_toy_model()
    text = AutoModelForCausalLM.from_pretrained(text_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(text_dir)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD]})
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = {t: tokenizer.convert_tokens_to_ids(t)
           for t in (VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)}
    tc = text.config
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=tc.hidden_size,
            intermediate_size=tc.intermediate_size, num_hidden_layers=tc.num_hidden_layers,
            num_attention_heads=tc.num_attention_heads,
            num_key_value_heads=tc.num_key_value_heads,
            max_position_embeddings=tc.max_position_embeddings, rms_norm_eps=tc.rms_norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                             "mrope_section": MROPE_SECTION},
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            bos_token_id=None, tie_word_embeddings=True,
        ),
        vision_config=dict(
            depth=VISION_DEPTH, hidden_size=VISION_HIDDEN, num_heads=VISION_HEADS,
            intermediate_size=VISION_INTERMEDIATE, out_hidden_size=tc.hidden_size,
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
            fullatt_block_indexes=[VISION_DEPTH - 1],
        ),
        image_token_id=ids[IMAGE_PAD], video_token_id=ids[VIDEO_PAD],
        vision_start_token_id=ids[VISION_START], vision_end_token_id=ids[VISION_END],
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    with torch.no_grad():
        lm = model.model.language_model
        old = text.model.state_dict()
        emb = old.pop("embed_tokens.weight")  # [V_text, H]
        missing, unexpected = lm.load_state_dict(old, strict=False)
        assert missing == ["embed_tokens.weight"] and not unexpected, (missing, unexpected)
        new = lm.embed_tokens.weight  # [V_text + 4, H]
        new[: emb.shape[0]] = emb
        # Vision tokens start as copies of <pad>: the toy never predicts it, so the tied head
        # gives them the same (low) logits; as inputs they are replaced or merely delimit.
        new[emb.shape[0]:] = emb[tokenizer.pad_token_id]
        model.lm_head.weight = lm.embed_tokens.weight
        last = model.model.visual.merger.mlp[-1]
        last.weight.mul_(MERGER_OUT_SCALE)
        last.bias.zero_()
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=IMAGE_PIXELS, max_pixels=IMAGE_PIXELS),
        video_processor=Qwen2VLVideoProcessor(), tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    (out_dir / "toy_build.json").write_text(json.dumps(
        {"seed": seed, "build_version": BUILD_VERSION, "text_model": "toy-qwen2",
         "parameters": sum(p.numel() for p in model.parameters())}, indent=2) + "\n")
    return out_dir


def ensure_toy_vl_model() -> Path:
    """The VL toy in the user cache, built once."""
    return build_once(toy_vl_cache_dir(), build_toy_vl_model,
                      lambda d: (d / "toy_build.json").is_file())


def image_token_id(config: Any) -> int | None:
    """The image placeholder id of a VL model's config, None for text models."""
    return getattr(config, "image_token_id", None)
