"""Each format's adapter on a format-faithful fixture: what becomes the sample, its target and quirks."""

from __future__ import annotations

import json

import pytest

import fixtures_datasets as fx
from vidtune.adapters import FORMATS, adapter
from vidtune.adapters.ego4d import clean_text
from vidtune.adapters.coco import image_id
from vidtune.errors import ConfigError, DataError
from vidtune.ingest import ingest_dataset
from vidtune.samples import Reject


def read(name, cfg):
    items = list(adapter(cfg["format"])(name, cfg))
    samples = {s.sample_id: s for s in items if not isinstance(s, Reject)}
    rejects = [r for r in items if isinstance(r, Reject)]
    return samples, rejects


# --- Ego4D -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, clean", [
    ("#C C opens the door", "C opens the door"),
    ("#O man X hands C a cup", "man X hands C a cup"),
    ("#c C is not a tag in lower case", "#c C is not a tag in lower case"),
    ("C picks the cup #unsure", "C picks the cup something"),
    ("C picks #UNSURE from the Oven", "C picks something from the Oven"),
    ("C cooks food #Summary. ", "C cooks food"),
    ("#summary C was in a kitchen.", "C was in a kitchen."),
    ("C   cleans the COUNTER  .  #SUMMARY", "C cleans the COUNTER."),
    ("Carla Opens the CD drawer, C O", "Carla Opens the CD drawer, C O"),
])
def test_ego4d_text_cleaning(raw, clean):
    assert clean_text(raw) == clean


def test_ego4d_summaries_use_first_available_pass(tmp_path):
    cfg = fx.make_ego4d_dataset(tmp_path)
    samples, rejects = read("ego", cfg)
    assert not rejects
    first, second, third = (f"ego/{uid}/summary_0000" for uid in fx.EGO4D_UIDS)
    assert samples[first].target == "C cooks in the kitchen with the Oven on"  # pass 1 preferred
    assert samples[second].target == "C cleans the kitchen COUNTER."  # pass 1 missing: pass 2
    assert (samples[second].clip_start, samples[second].clip_end) == (0.0, 1.5)
    assert samples[third].media_path == f"v1/full_scale/{fx.EGO4D_UIDS[2]}.mp4"  # v1 fallback
    assert samples[first].media_path == f"v2/full_scale/{fx.EGO4D_UIDS[0]}.mp4"
    assert {s.group_key for s in samples.values()} == set(fx.EGO4D_UIDS)
    assert all(s.duration == 2.0 for s in samples.values())
    assert samples[first].prompt == "Summarise what the camera wearer does."


def test_ego4d_narrations_windows_around_timestamps(tmp_path):
    cfg = fx.make_ego4d_dataset(tmp_path, target="narrations")
    samples, _ = read("ego", cfg)
    uid = fx.EGO4D_UIDS[0]
    opens = samples[f"ego/{uid}/narration_00000"]
    assert opens.target == "C opens the Cupboard"
    assert (opens.clip_start, opens.clip_end) == (0.0, 1.0)
    cup = samples[f"ego/{uid}/narration_00001"]
    assert cup.target == "man X hands C a cup something"
    assert (cup.clip_start, cup.clip_end) == (1.0, 2.0)  # cut at the video's 2 s
    assert samples[f"ego/{fx.EGO4D_UIDS[1]}/narration_00000"].target == "C washes the dishes something"
    assert len(samples) == 4  # pass 2 of the first video is not added on top of pass 1


def test_ego4d_plain_summary_file(tmp_path):
    cfg = fx.make_ego4d_dataset(tmp_path, target="summary_file")
    samples, _ = read("ego", cfg)
    whole = samples[f"ego/{fx.EGO4D_UIDS[1]}"]
    assert whole.target == "C does task 1 in the Office"
    assert whole.clip_start is None and whole.clip_end is None


def test_ego4d_video_without_any_pass_is_rejected(tmp_path):
    cfg = fx.make_ego4d_dataset(tmp_path)
    path = tmp_path / "v2" / "annotations" / "narration.json"
    narration = json.loads(path.read_text())
    narration["extra-video"] = {"status": "redacted"}
    path.write_text(json.dumps(narration))
    _, rejects = read("ego", cfg)
    assert [r.record for r in rejects] == ["video_uid extra-video"]
    assert rejects[0].reason.startswith("missing_field")


def test_ego4d_hand_made_layout_at_the_root_is_found_too(tmp_path):
    cfg = fx.make_ego4d_dataset(tmp_path)
    for name in ("ego4d.json", "annotations"):
        (tmp_path / "v2" / name).rename(tmp_path / name)
    samples, rejects = read("ego", cfg)
    assert len(samples) == 3 and not rejects
    assert all(s.duration == 2.0 for s in samples.values())


def test_ego4d_without_metadata_warns_and_ingest_reads_durations(tmp_path, caplog):
    cfg = fx.make_ego4d_dataset(tmp_path)
    (tmp_path / "v2" / "ego4d.json").unlink()
    with caplog.at_level("WARNING", logger="vidtune.adapters.ego4d"):
        samples, _ = read("ego", cfg)
    assert all(s.duration is None for s in samples.values())
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "duration of 3 of 3 videos is unknown" in warning and "datasets.ego.options.metadata" in warning
    assert str(tmp_path / "v2" / "ego4d.json") in warning
    # Ingest still checks and cuts the windows: the length comes from each video's header.
    ingested = {s.sample_id: s for s in ingest_dataset("ego", cfg).samples}
    assert all(s.duration == 2.0 for s in ingested.values())


def test_ego4d_metadata_option_must_exist(tmp_path):
    cfg = fx.make_ego4d_dataset(tmp_path)
    cfg["options"] = {"metadata": "elsewhere/ego4d.json"}
    with pytest.raises(ConfigError, match=r"datasets\.ego\.options\.metadata"):
        read("ego", cfg)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "v2" / "ego4d.json").rename(tmp_path / "elsewhere" / "ego4d.json")
    samples, _ = read("ego", cfg)
    assert all(s.duration == 2.0 for s in samples.values())


def test_ego4d_missing_narration_file_names_the_annotations_setting(tmp_path):
    cfg = fx.make_ego4d_dataset(tmp_path)
    (tmp_path / "v2" / "annotations" / "narration.json").unlink()
    with pytest.raises(ConfigError, match=r"v2/annotations/narration\.json.*datasets\.ego\.annotations"):
        read("ego", cfg)


def test_ego4d_summary_past_the_video_is_cut_to_it(tmp_path):
    cfg = fx.make_ego4d_dataset(tmp_path)
    path = tmp_path / "v2" / "annotations" / "narration.json"
    narration = json.loads(path.read_text())
    narration[fx.EGO4D_UIDS[2]]["narration_pass_1"]["summaries"][0].update(start_sec=1.0, end_sec=5.0)
    path.write_text(json.dumps(narration))
    samples = {s.sample_id: s for s in ingest_dataset("ego", cfg).samples}
    cut = samples[f"ego/{fx.EGO4D_UIDS[2]}/summary_0000"]
    assert (cut.clip_start, cut.clip_end) == (1.0, 2.0)


# --- QEVD ------------------------------------------------------------------------------------------

def test_qevd_fine_grained_paths_split_and_labels(tmp_path):
    cfg = fx.make_qevd_dataset(tmp_path)
    samples, rejects = read("q", cfg)
    assert not rejects
    clip = samples["q/00000009.mp4"]  # "./00000009.mp4" in the file
    assert clip.media_path == "00000009.mp4"
    assert clip.target == "The person does squats. Knees bend fully on rep 0."
    assert [samples[k].official_split for k in sorted(samples)] == ["train", "train", "val", "test"]


def test_qevd_labels_and_feedbacks_targets(tmp_path):
    cfg = fx.make_qevd_dataset(tmp_path, target="feedbacks")
    samples, _ = read("q", cfg)
    assert samples["q/00000123.mp4"].target == "Keep your back straight. Good depth on rep 2!"
    assert samples["q/00000123.mp4"].official_split == "val"
    cfg["options"] = {"target": "labels", "separator": "; "}
    samples, _ = read("q", cfg)
    assert samples["q/00000010.mp4"].target == "squats; rep 1"


def test_qevd_feedbacks_key_is_configurable(tmp_path):
    cfg = fx.make_qevd_dataset(tmp_path)
    path = tmp_path / "feedbacks_short_clips.json"
    entries = json.loads(path.read_text())
    for entry in entries:
        entry["feedback_texts"] = entry.pop("feedbacks")
    path.write_text(json.dumps(entries))
    cfg["options"] = {"target": "feedbacks", "feedbacks_key": "feedback_texts"}
    samples, rejects = read("q", cfg)
    assert len(samples) == 4 and not rejects


def test_qevd_ground_truth_layout_folders_per_class(tmp_path):
    cfg = fx.make_qevd_dataset(tmp_path, layout="ground_truth")
    samples, _ = read("q", cfg)
    assert samples["q/00000123.mp4"].media_path == "dataset/jumping_jacks/00000123.mp4"
    assert samples["q/00000123.mp4"].target == "The person does jumping jacks."
    assert samples["q/00000009.mp4"].official_split is None
    cfg["options"] = {"layout": "ground_truth", "target": "feedbacks"}
    with pytest.raises(ConfigError, match="fine_grained"):
        read("q", cfg)


def test_qevd_unknown_split_value_is_rejected(tmp_path):
    cfg = fx.make_qevd_dataset(tmp_path)
    path = tmp_path / "fine_grained_labels.json"
    entries = json.loads(path.read_text())
    entries[0]["split"] = "holdout"
    path.write_text(json.dumps(entries))
    _, rejects = read("q", cfg)
    assert rejects[0].record == "[0]" and "unknown split 'holdout'" in rejects[0].reason


# --- Nexar -----------------------------------------------------------------------------------------

def test_nexar_metadata_target_is_canonical_json_with_aliases(tmp_path):
    cfg = fx.make_nexar_dataset(tmp_path)
    samples, rejects = read("n", cfg)
    assert not rejects
    third = samples["n/videos/00003.mp4"]  # written with "intended_action"
    assert third.media_path == "dataset/videos/00003.mp4"
    values = json.loads(third.target)
    assert list(values) == fx.NEXAR_FIELDS
    assert values["intended_driving_action"] == "go_straight"
    assert json.loads(samples["n/videos/00002.mp4"].target)["rule_violations"] == ["speeding"]


def test_nexar_field_set_and_user_aliases(tmp_path, caplog):
    cfg = fx.make_nexar_dataset(tmp_path)
    path = tmp_path / "dataset" / "metadata.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        row["density"] = row.pop("traffic_density")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level("WARNING", logger="vidtune.adapters.nexar"):
        samples, rejects = read("n", cfg)  # no record has the field: it is left out, not null everywhere
    assert not rejects and all("traffic_density" not in json.loads(s.target) for s in samples.values())
    assert "traffic_density" in caplog.text and "datasets.n.options.aliases" in caplog.text
    cfg["options"] = {"aliases": {"traffic_density": ["density"]}}
    samples, rejects = read("n", cfg)
    assert not rejects
    assert json.loads(samples["n/videos/00001.mp4"].target)["traffic_density"] == "low"
    rows[0].pop("density")  # one record lacking a field the others have is rejected
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, rejects = read("n", cfg)
    assert [r.record for r in rejects] == ["line 1"] and "traffic_density" in rejects[0].reason
    cfg["options"] = {"fields": ["event_type", "visibility"]}
    samples, _ = read("n", cfg)
    assert samples["n/videos/00001.mp4"].target == '{"event_type": "normal", "visibility": "good"}'


def test_nexar_competition_unpadded_ids_and_windows(tmp_path):
    cfg = fx.make_nexar_dataset(tmp_path, layout="competition")
    samples, rejects = read("n", cfg)
    assert not rejects
    # id 7 -> train/00007.mp4, a negative: four 0.5 s windows, all normal
    negatives = [s for s in samples.values() if s.group_key == "00007"]
    assert [(s.clip_start, s.clip_end) for s in negatives] == [(0.0, 0.5), (0.5, 1.0), (1.0, 1.5), (1.5, 2.0)]
    assert {json.loads(s.target)["label"] for s in negatives} == {"normal"}
    assert negatives[0].media_path == "train/00007.mp4"
    labels = [json.loads(samples[f"n/00822/w{k:03d}"].target)["label"] for k in range(4)]
    assert labels == ["normal", "normal", "risk_ahead", "collision_or_near_miss"]  # alert 1.1, event 1.6
    assert json.loads(samples["n/00822/w000"].target)["weather"] == "Clear"  # from metadata.csv
    # event at 0.7: windows after it are left out
    assert sorted(k for k in samples if k.startswith("n/01234/")) == ["n/01234/w000", "n/01234/w001"]
    assert samples["n/01234/w000"].duration == pytest.approx(2.0, abs=0.05)


def test_nexar_competition_without_metadata_csv_has_no_null_fields(tmp_path, caplog):
    cfg = fx.make_nexar_dataset(tmp_path, layout="competition")
    (tmp_path / "train" / "metadata.csv").unlink()
    with caplog.at_level("WARNING", logger="vidtune.adapters.nexar"):
        samples, rejects = read("n", cfg)
    assert not rejects and samples
    labels = ("normal", "risk_ahead", "collision_or_near_miss")
    assert {s.target for s in samples.values()} <= {json.dumps({"label": label}) for label in labels}
    assert "light_conditions, weather, scene" in caplog.text


def test_nexar_competition_keeps_a_metadata_field_some_video_has(tmp_path):
    cfg = fx.make_nexar_dataset(tmp_path, layout="competition")
    path = tmp_path / "train" / "metadata.csv"
    path.write_text("file_name,light_conditions,weather,scene\n00822.mp4,Normal,,\n00007.mp4,,,\n")
    samples, _ = read("n", cfg)
    assert json.loads(samples["n/00822/w000"].target) == {"label": "normal", "light_conditions": "Normal"}
    assert json.loads(samples["n/00007/w000"].target) == {"label": "normal", "light_conditions": None}
    assert json.loads(samples["n/01234/w001"].target) == {"label": "collision_or_near_miss",
                                                         "light_conditions": None}


def test_nexar_competition_window_width_option(tmp_path):
    cfg = fx.make_nexar_dataset(tmp_path, layout="competition")
    cfg["options"] = {"layout": "competition", "window_s": 1.0}
    samples, _ = read("n", cfg)
    assert [k for k in sorted(samples) if k.startswith("n/00007/")] == ["n/00007/w000", "n/00007/w001"]


# --- COCO ------------------------------------------------------------------------------------------

def test_coco_image_ids_from_file_names():
    assert image_id("val2014/COCO_val2014_000000391895.jpg") == 391895
    with pytest.raises(ValueError):
        image_id("val2014/cover.jpg")


def test_coco_train_and_test_keep_all_references(tmp_path):
    cfg = fx.make_coco_dataset(tmp_path)
    samples, rejects = read("coco", cfg)
    assert not rejects
    test = samples["coco/test/391895"]
    assert test.media_type == "image" and test.official_split == "test"
    assert test.references == tuple(fx.COCO_TEST[391895])
    assert test.target == fx.COCO_TEST[391895][0]
    assert test.group_key == "391895"
    train = [samples["coco/train/57870/0"], samples["coco/train/57870/1"]]
    assert [s.target for s in train] == fx.COCO_TRAIN[57870]
    assert all(s.references == tuple(fx.COCO_TRAIN[57870]) for s in train)
    assert train[0].prompt == "Provide a one-sentence caption for the provided image."  # from the human turn
    assert train[0].official_split == "train"


# --- generic JSONL / CSV / demo --------------------------------------------------------------------

def test_jsonl_clip_windows_conversations_images(tmp_path):
    cfg = fx.make_jsonl_dataset(tmp_path)
    samples, rejects = read("j", cfg)
    assert not rejects
    assert (samples["j/v1-early"].clip_start, samples["j/v1-early"].clip_end) == (0.0, 1.0)
    late = samples["j/v1-late"]
    assert (late.clip_start, late.clip_end) == (1.0, 2.0)
    assert late.prompt == "What happens at the end?" and late.target == "the colours keep cycling"
    assert samples["j/images/cat.jpg"].media_type == "image"
    assert samples["j/videos/v2.mp4"].references == ("a third video", "video three")
    assert samples["j/videos/v0.mp4"].prompt == "Describe the video."


def test_jsonl_field_names_are_options(tmp_path):
    fx.make_video(tmp_path / "a.mp4")
    fx.write_jsonl(tmp_path / "ann.jsonl", [{"path": "a.mp4", "text": "hello", "t0": 0, "t1": 0.5}])
    cfg = {"format": "jsonl", "root": str(tmp_path), "annotations": str(tmp_path / "ann.jsonl"),
           "options": {"video_field": "path", "caption_field": "text", "start_field": "t0", "end_field": "t1"}}
    samples, _ = read("j", cfg)
    (only,) = samples.values()
    assert (only.media_path, only.target, only.clip_start, only.clip_end) == ("a.mp4", "hello", 0.0, 0.5)


def test_jsonl_multi_turn_conversation_is_rejected(tmp_path):
    turn = [{"from": "human", "value": "<video>\nq"}, {"from": "gpt", "value": "a"}]
    fx.write_jsonl(tmp_path / "ann.jsonl", [{"video": "a.mp4", "conversations": turn * 2}])
    cfg = {"format": "jsonl", "root": str(tmp_path), "annotations": str(tmp_path / "ann.jsonl")}
    _, rejects = read("j", cfg)
    assert rejects[0].reason.startswith("malformed_record") and rejects[0].record == "line 1"


def test_csv_quoted_captions_and_windows(tmp_path):
    cfg = fx.make_csv_dataset(tmp_path)
    samples, rejects = read("c", cfg)
    assert not rejects
    assert samples["c/a"].target == "a clip, with a comma"
    assert samples["c/a"].media_path == "media/clip 0.mp4"
    assert (samples["c/b"].clip_start, samples["c/b"].clip_end) == (0.5, 1.5)
    assert samples["c/d"].media_type == "image"


def test_demo_reads_like_jsonl(tmp_path):
    cfg = fx.make_demo_dataset(tmp_path)
    del cfg["annotations"]  # defaults to <root>/annotations.jsonl
    samples, _ = read("demo", cfg)
    assert samples["demo/clip_001.mp4"].target == "a blue circle grows"


# --- options and annotation files ------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_unknown_option_names_the_key(tmp_path, fmt):
    cfg = fx.MAKERS[fmt](tmp_path)
    cfg["options"] = {**cfg.get("options", {}), "no_such_option": 1}
    with pytest.raises(ConfigError, match=r"datasets\.x\.options\.no_such_option"):
        read("x", cfg)


def test_option_of_wrong_type_names_the_key(tmp_path):
    cfg = fx.make_ego4d_dataset(tmp_path)
    cfg["options"] = {"narration_window_s": "wide"}
    with pytest.raises(ConfigError, match=r"datasets\.e\.options\.narration_window_s"):
        read("e", cfg)
    cfg["options"] = {"target": "everything"}
    with pytest.raises(ConfigError, match=r"datasets\.e\.options\.target"):
        read("e", cfg)


def test_invalid_json_annotation_names_file_and_line(tmp_path):
    cfg = fx.make_ego4d_dataset(tmp_path)
    path = tmp_path / "v2" / "annotations" / "narration.json"
    path.write_text('{\n  "a": {\n    "narration_pass_1": [1, 2,\n')
    with pytest.raises(DataError, match=r"narration\.json \(record line \d+\): not valid JSON"):
        ingest_dataset("e", cfg)


def test_jsonl_that_is_not_jsonl_at_all_fails_naming_line(tmp_path):
    (tmp_path / "ann.jsonl").write_text('[{"video": "a.mp4", "caption": "x"},\n {"video": "b.mp4", "caption": "y"}]\n')
    cfg = {"format": "jsonl", "root": str(tmp_path), "annotations": str(tmp_path / "ann.jsonl")}
    with pytest.raises(DataError, match=r"ann\.jsonl \(record line 1\)"):
        read("j", cfg)


def test_csv_with_broken_quoting_names_file_and_line(tmp_path):
    (tmp_path / "ann.csv").write_text('video,caption\na.mp4,"fine"\nb.mp4,"broken "quote" here\n')
    cfg = {"format": "csv", "root": str(tmp_path), "annotations": str(tmp_path / "ann.csv")}
    with pytest.raises(DataError, match=r"ann\.csv \(record line \d+\): not valid CSV"):
        read("c", cfg)


def test_missing_annotation_file_is_a_config_error(tmp_path):
    cfg = {"format": "jsonl", "root": str(tmp_path), "annotations": str(tmp_path / "nope.jsonl")}
    with pytest.raises(ConfigError, match=r"datasets\.j\.annotations"):
        read("j", cfg)
