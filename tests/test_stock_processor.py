"""The stock InternVLProcessor, taken wherever torchvision is installed, encodes exactly as the image-only one.

`make setup` installs a torchvision that loads (envs/install_torch.sh), so this runs in every test run.
"""

from __future__ import annotations

import pytest
import torch
import torchvision  # noqa: F401 - the stock processor needs it; a failed import fails this module
from PIL import Image
from transformers import InternVLProcessor

from vidtune.families import Media
from vidtune.families.internvl import FAMILY as INTERNVL
from vidtune.families.internvl import InternVLImageOnlyProcessor
from vidtune.modeling import load_processor
from vidtune.tiny_model import build_architecture_model, synthetic_frames


@pytest.fixture(scope="module")
def real_shape(tmp_path_factory):
    folder = tmp_path_factory.mktemp("real") / "model"
    build_architecture_model(folder, {"name": "internvl3-1b", "text_layers": 1, "vision_layers": 1,
                                      "vocab_size": 4096})
    return folder


def test_stock_processor_is_taken_and_encodes_like_the_image_only_one(real_shape):
    stock = load_processor(real_shape)
    assert type(stock) is InternVLProcessor
    image_only = InternVLImageOnlyProcessor.from_pretrained(real_shape)
    frames = synthetic_frames("red", "circle", "left", 8, 448)
    wide = Image.new("RGB", (896, 448), (30, 200, 60))
    for images, media_type in ((frames, "video"), ([wide], "image")):
        ours = INTERNVL.encode(image_only, Media(images, media_type), "Describe it.", "a red circle")
        theirs = INTERNVL.encode(stock, Media(images, media_type), "Describe it.", "a red circle")
        assert torch.equal(ours["input_ids"], theirs["input_ids"])
        assert torch.equal(ours["labels"], theirs["labels"])
        assert torch.allclose(ours["pixel_values"], theirs["pixel_values"], atol=2e-2)
