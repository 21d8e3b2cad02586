"""Image values in dataset rows: every accepted form decodes to the same pixels; unusable ones
are a BadImage naming what is wrong; placeholders put images where the text says."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from grpo_cli.data.vision import (
    BadImage,
    concat_vision,
    decode_image,
    row_images,
    vision_messages,
)


def _png(color: tuple[int, int, int] = (200, 30, 60), size: tuple[int, int] = (20, 10)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def _noise_png() -> bytes:
    import numpy as np

    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def test_every_accepted_form_decodes_to_the_same_pixels(tmp_path: Path) -> None:
    data = _png()
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(data)
    b64 = base64.b64encode(data).decode()
    forms = [
        data,
        {"bytes": data, "path": "ignored.png"},  # HF Image feature: bytes win
        {"bytes": None, "path": "imgs/a.png"},
        "imgs/a.png",  # relative to the dataset's directory
        str(tmp_path / "imgs" / "a.png"),
        "file://" + str(tmp_path / "imgs" / "a.png"),
        "data:image/png;base64," + b64,
        Image.open(io.BytesIO(data)),
    ]
    expected = list(Image.open(io.BytesIO(data)).convert("RGB").getdata())
    for form in forms:
        image = decode_image(form, tmp_path)
        assert image.mode == "RGB" and image.size == (20, 10)
        assert list(image.getdata()) == expected, type(form)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"not an image", "image bytes is not a readable image"),
        (_noise_png()[:2000], "image bytes is not a readable image"),  # cut short
        ("missing.png", "missing.png not found"),
        ("https://example.com/a.png", "remote images are not fetched"),
        ("data:image/png;base64,@@@", "invalid base64 image"),
        ({"bytes": None, "path": None}, "neither bytes nor path"),
        (3.5, "unsupported image value of type float"),
    ],
)
def test_unusable_images_say_why(tmp_path: Path, value: object, message: str) -> None:
    with pytest.raises(BadImage, match=message):
        decode_image(value, tmp_path)


def test_row_images_accepts_one_value_or_a_list_and_no_column() -> None:
    assert len(row_images({"images": [_png(), _png()]}, "images", None)) == 2
    assert len(row_images({"img": _png()}, "img", None)) == 1
    assert row_images({"problem": "x"}, "images", None) == []


def test_placeholders_put_images_in_text_order() -> None:
    a, b = Image.new("RGB", (4, 4)), Image.new("RGB", (8, 8))
    (msg,) = vision_messages("Compare <image> with <image>. Which?", [a, b], 3136, 6272)
    kinds = [(item["type"], item.get("text")) for item in msg["content"]]
    assert kinds == [("text", "Compare "), ("image", None), ("text", " with "), ("image", None),
                     ("text", ". Which?")]
    images = [item for item in msg["content"] if item["type"] == "image"]
    assert images[0]["image"] is a and images[1]["image"] is b
    assert images[0]["min_pixels"] == 3136 and images[0]["max_pixels"] == 6272
    # without placeholders the images come first; no pixel bounds means the library defaults
    (msg,) = vision_messages("What is shown?", [a], None, None)
    assert [item["type"] for item in msg["content"]] == ["image", "text"]
    assert "max_pixels" not in msg["content"][0]


def test_placeholder_count_must_match_the_images() -> None:
    with pytest.raises(BadImage, match="2 <image> placeholders but the row has 1 images"):
        vision_messages("<image> and <image>", [Image.new("RGB", (4, 4))], None, None)


def test_concat_vision_keeps_sequence_order() -> None:
    import torch

    parts = [{"pixel_values": torch.full((4, 3), float(i)),
              "image_grid_thw": torch.tensor([[1, 2, 2]])} for i in range(3)]
    out = concat_vision(parts)
    assert out["pixel_values"].shape == (12, 3)
    assert out["pixel_values"][:, 0].tolist() == [0.0] * 4 + [1.0] * 4 + [2.0] * 4
    assert out["image_grid_thw"].tolist() == [[1, 2, 2]] * 3
    assert concat_vision([{}, {}]) == {}
