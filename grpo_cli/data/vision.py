"""Image prompts for vision-language models: decode a row's images, build Qwen chat messages,
and prepare vision inputs with ``qwen_vl_utils.process_vision_info`` and the model's processor.

A row's image column (``data.image_key``) holds a list (or one) of: file paths (relative to the
dataset file), raw bytes, HF ``Image`` feature dicts (``{"bytes": ..., "path": ...}``, as in
EasyR1's geometry3k Parquet files) or base64 strings (``data:image/...;base64,`` or bare).
``<image>`` placeholders in the prompt text mark where each image goes, as in EasyR1; without
placeholders the images come first. Anything unreadable is a :class:`BadImage`, never a
silently wrong or missing image.
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from typing import Any

import torch

PLACEHOLDER = "<image>"


class BadImage(ValueError):
    """A row's images cannot be used (missing, corrupt, or not matching the placeholders)."""


def _open(data: bytes, what: str) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # decode now: a truncated file fails here, not mid-training
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadImage(f"{what} is not a readable image ({e})") from e
    return image.convert("RGB")


def decode_image(value: Any, base_dir: Path | None) -> Any:
    """One image value -> an RGB ``PIL.Image``."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, dict):  # HF Image feature: bytes win over path
        if value.get("bytes"):
            return _open(value["bytes"], "image bytes")
        if value.get("path"):
            return decode_image(str(value["path"]), base_dir)
        raise BadImage("image record has neither bytes nor path")
    if isinstance(value, bytes | bytearray):
        return _open(bytes(value), "image bytes")
    if isinstance(value, str):
        if value.startswith(("http://", "https://")):
            raise BadImage(f"{value}: remote images are not fetched; store them with the data")
        if value.startswith("data:image"):
            return _open(_b64(value.split("base64,", 1)[-1]), "base64 image")
        path = Path(value.removeprefix("file://")).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if path.is_file():
            return _open(path.read_bytes(), str(path))
        if len(value) > 256 and "/" not in value[:64]:  # bare base64, not a path
            return _open(_b64(value), "base64 image")
        raise BadImage(f"image file {path} not found")
    raise BadImage(f"unsupported image value of type {type(value).__name__}")


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadImage(f"invalid base64 image ({e})") from e


def row_images(row: dict[str, Any], key: str, base_dir: Path | None) -> list[Any]:
    """The decoded images of a row ([] when the column is absent or empty)."""
    value = row.get(key)
    if value is None:
        return []
    values = list(value) if isinstance(value, list | tuple) else [value]
    return [decode_image(v, base_dir) for v in values]


def vision_messages(text: str, images: list[Any], min_pixels: int | None,
                    max_pixels: int | None) -> list[dict[str, Any]]:
    """One user message: text pieces and image items in placeholder order."""
    pieces = text.split(PLACEHOLDER)
    if len(pieces) > 1 and len(pieces) - 1 != len(images):
        raise BadImage(f"the prompt has {len(pieces) - 1} {PLACEHOLDER} placeholders but the "
                       f"row has {len(images)} images")
    if len(pieces) == 1:  # no placeholders: images first
        pieces = [""] * len(images) + pieces
    sizes = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v}
    content: list[dict[str, Any]] = []
    for i, piece in enumerate(pieces):
        if i > 0:
            content.append({"type": "image", "image": images[i - 1], **sizes})
        if piece:
            content.append({"type": "text", "text": piece})
    return [{"role": "user", "content": content}]


def encode_prompt(processor: Any, messages: list[dict[str, Any]]) -> tuple[str, list[int],
                                                                          dict[str, torch.Tensor]]:
    """Chat-templated text, token ids (image pads expanded) and vision tensors:
    ``pixel_values`` [patches, C*T*P*P] and ``image_grid_thw`` [images, 3]."""
    from qwen_vl_utils import process_vision_info

    images, _ = process_vision_info(messages)  # resized within min/max pixels
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    enc = processor(text=[text], images=images or None, return_tensors="pt")
    vision = {k: enc[k] for k in ("pixel_values", "image_grid_thw") if k in enc}
    return text, enc["input_ids"][0].tolist(), vision


def concat_vision(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-sequence vision inputs -> one model call's (patches and grids in sequence order)."""
    out: dict[str, torch.Tensor] = {}
    for key in ("pixel_values", "image_grid_thw"):
        tensors = [p[key] for p in parts if key in p]
        if tensors:
            out[key] = torch.cat(tensors)
    return out


def image_inputs(processor: Any, images: list[Any]) -> dict[str, torch.Tensor]:
    """Only the vision tensors of :func:`encode_prompt`, from images already resized by
    ``process_vision_info`` (same resizing, so the same grid): recomputed per step instead of
    holding every prompt's pixels in memory."""
    if not images:
        return {}
    enc = processor.image_processor(images=images, return_tensors="pt")
    return {"pixel_values": enc["pixel_values"], "image_grid_thw": enc["image_grid_thw"]}
