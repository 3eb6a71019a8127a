"""A run that mixes datasets is trained and evaluated with each dataset's own settings (issue 24): an image
dataset and a video dataset with different prompts and tiling keep both into the trained model's
vidtune.json, and prediction feeds the model each record with its dataset's prompt and tiles."""

from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

from vidtune.atomic import read_jsonl
from vidtune.predict import Predictor, main, predict_records
from vidtune.tiny_model import write_synthetic_dataset
from vidtune.train import train

torch.set_num_threads(1)
CLIPS_PROMPT, PHOTOS_PROMPT = "Describe the video.", "What is in the picture?"


@pytest.fixture(scope="module")
def mixed(tiny, tmp_path_factory):
    """A LoRA run (two steps) on clips (video, 1 tile) + photos (images of 64 px, up to 4 tiles)."""
    base = tmp_path_factory.mktemp("mixed")
    clips = write_synthetic_dataset(base / "clips", 4, num_frames=2, size=32, prompt=CLIPS_PROMPT)
    photos = write_synthetic_dataset(base / "photos", 4, size=64, prompt=PHOTOS_PROMPT, images=4)
    meta = {name: json.loads(path.read_text())["synthetic"] for name, path in (("clips", clips), ("photos", photos))}
    meta["photos"]["max_dynamic_patch"] = 4
    meta["photos"]["data_settings"]["frames"] = {"policy": "uniform", "num_frames": 1, "short_side": 64}
    (base / "meta.json").write_text(json.dumps(meta))
    train(base / "meta.json", tiny, base / "run", {"max_steps": 2, "batch_size": 4, "save_steps": 100})
    records = {name: read_jsonl(base / name / "train.jsonl") for name in ("clips", "photos")}
    return base, tiny, base / "run" / "final", records


def test_the_trained_model_keeps_each_datasets_settings(mixed):
    _, _, adapter, _ = mixed
    datasets = json.loads((adapter / "vidtune.json").read_text())["datasets"]
    assert datasets["clips"]["prompt"] == CLIPS_PROMPT and datasets["clips"]["max_dynamic_patch"] == 1
    assert datasets["clips"]["frames"]["num_frames"] == 2
    assert datasets["photos"]["prompt"] == PHOTOS_PROMPT and datasets["photos"]["max_dynamic_patch"] == 4


def test_prediction_feeds_each_record_its_datasets_prompt_and_tiles(mixed):
    base, tiny, adapter, records = mixed
    predictor = Predictor(tiny, adapter, {"max_new_tokens": 4})
    mixed_records = [records["clips"][0], records["photos"][0], records["clips"][1], records["photos"][1]]
    names = ["clips", "photos", "clips", "photos"]
    roots = {"clips": base / "clips", "photos": base / "photos"}
    inputs = [predictor.inputs(predictor.record_samples([record], roots[name], [name]))[0]
              for record, name in zip(mixed_records, names)]
    decode = predictor.processor.tokenizer.decode
    for name, fed in zip(names, inputs):
        text = decode(fed["input_ids"])
        if name == "clips":  # two frames, a tile each, the clips' prompt
            assert CLIPS_PROMPT in text and PHOTOS_PROMPT not in text and fed["pixel_values"].shape[0] == 2
        else:  # a 64 px photo in 2x2 tiles of 32 px plus the thumbnail, the photos' prompt
            assert PHOTOS_PROMPT in text and CLIPS_PROMPT not in text and fed["pixel_values"].shape[0] == 5
    assert predictor.settings("photos")["max_dynamic_patch"] == 4
    with pytest.raises(Exception, match="different prompt, frame or tiling settings"):
        predictor.settings(None)
    with pytest.raises(Exception, match="not trained on dataset 'other'"):
        predictor.settings("other")


def test_predict_records_answers_a_mixed_list_with_settings_by_dataset(mixed):
    base, tiny, adapter, records = mixed
    # Paths relative to one root, as the workflow's records are (relative to the results folder).
    clips = [{**record, "video": f"clips/{record['video']}"} for record in records["clips"][:2]]
    photos = [{**record, "image": f"photos/{record['image']}"} for record in records["photos"][:2]]
    mixed_records = [clips[0], photos[0], clips[1], photos[1]]
    names = ["clips", "photos", "clips", "photos"]
    predictions = predict_records(tiny, mixed_records, base, {"max_new_tokens": 4, "batch_size": 4},
                                  adapter_dir=adapter, datasets=names)
    assert [entry["id"] for entry in predictions] == [record["id"] for record in mixed_records]
    # Settings given by dataset (the workflow passes each dataset's tiling from the config) win over the stored.
    predictor = Predictor(tiny, adapter, datasets={"photos": {"max_dynamic_patch": 1}})
    fed = predictor.inputs(predictor.record_samples([photos[0]], base, ["photos"]))[0]
    assert fed["pixel_values"].shape[0] == 1 and PHOTOS_PROMPT in predictor.processor.tokenizer.decode(fed["input_ids"])


def test_the_command_line_asks_which_dataset(mixed, capsys):
    base, tiny, adapter, records = mixed
    image = base / "photos" / records["photos"][0]["image"]
    assert main(["--model", str(tiny), "--adapter", str(adapter), "--image", str(image),
                 "--max-new-tokens", "2"]) == 2
    assert "--dataset" in capsys.readouterr().err
    assert main(["--model", str(tiny), "--adapter", str(adapter), "--image", str(image), "--dataset", "photos",
                 "--max-new-tokens", "2"]) == 0
