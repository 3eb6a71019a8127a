"""Tiny, format-faithful dataset fixtures with real ffmpeg-encoded media (64 px, 1-2 s).

``make_<format>_dataset(root) -> dict`` writes a dataset in that format's published layout, quirks
included, and returns its config entry (before schema defaults), ready for ``config["datasets"][name]``.
The split ratios and seed returned are chosen so that train and test both get samples.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from vidtune.samples import Sample
from vidtune.split import assign_splits

_MEDIA_CACHE = Path(tempfile.gettempdir()) / f"vidtune-fixture-media-{os.getuid()}"


def _ffmpeg(out: Path, source: str, *extra: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", source, *extra, "-threads", "1", str(out)],
                   check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _cached(name: str, make) -> Path:
    """Encode each distinct fixture file once per machine; later calls copy it."""
    path = _MEDIA_CACHE / name
    if not path.exists():
        temp = path.with_name(f".{name}.{os.getpid()}.tmp{path.suffix}")
        make(temp)
        os.replace(temp, path)
    return path


def make_video(path: Path, seconds: float = 1.0, size: int = 64, variant: int = 0) -> Path:
    """A real H.264 mp4 (``variant`` changes the colours, so videos differ in content)."""
    source = _cached(f"video-{seconds}-{size}-{variant}.mp4", lambda out: _ffmpeg(
        out, f"testsrc=size={size}x{size}:rate=5:duration={seconds}", "-vf", f"hue=h={variant * 47 % 360}",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"))
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, path)
    return path


def make_image(path: Path, width: int = 64, height: int = 48, variant: int = 0) -> Path:
    source = _cached(f"image-{width}x{height}-{variant}.jpg", lambda out: _ffmpeg(
        out, f"testsrc=size={width}x{height}:rate=1:duration=1", "-vf", f"hue=h={variant * 47 % 360}",
        "-frames:v", "1"))
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, path)
    return path


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def split_with_train_and_test(group_keys: list[str], train: float = 0.5, test: float = 0.5) -> dict:
    """Split settings (ratios and the first seed) under which both train and test get a group."""
    probes = [Sample(sample_id=k, dataset="d", media_type="video", media_path=k, prompt="p", target="t",
                     references=("t",), group_key=k) for k in group_keys]
    for seed in range(1000):
        cfg = {"train": train, "val": 0.0, "test": test, "seed": seed}
        if {"train", "test"} <= set(assign_splits(probes, cfg)):
            return cfg
    raise AssertionError("no seed splits these groups into train and test")


def make_demo_dataset(root: Path) -> dict:
    """The generated demo layout: ``clip_NNN.mp4`` and ``annotations.jsonl`` under the root."""
    root = Path(root)
    captions = ["a red square moves left", "a blue circle grows", "a green bar slides down",
                "a yellow dot blinks"]
    records = []
    for index, caption in enumerate(captions):
        make_video(root / f"clip_{index:03d}.mp4", variant=index)
        records.append({"video": f"clip_{index:03d}.mp4", "caption": caption})
    write_jsonl(root / "annotations.jsonl", records)
    return {"format": "demo", "root": str(root), "annotations": str(root / "annotations.jsonl"),
            "prompt": "Describe the video.",
            "split": split_with_train_and_test([r["video"] for r in records])}


def make_jsonl_dataset(root: Path) -> dict:
    """Generic JSONL: whole videos, clip windows (``start``/``end`` and InternVL's ``clip``), a caption
    or a single-turn conversation, an image, explicit references."""
    root = Path(root)
    for index in range(3):
        make_video(root / "videos" / f"v{index}.mp4", seconds=2.0, variant=index)
    make_image(root / "images" / "cat.jpg")
    records = [
        {"video": "videos/v0.mp4", "caption": "a whole video"},
        {"id": "v1-early", "video": "videos/v1.mp4", "start": 0.0, "end": 1.0, "caption": "the first second"},
        {"id": "v1-late", "video": "videos/v1.mp4", "clip": [1.0, 2.0],
         "conversations": [{"from": "human", "value": "<video>\nWhat happens at the end?"},
                           {"from": "gpt", "value": "the colours keep cycling"}]},
        {"video": "videos/v2.mp4", "caption": "a third video", "references": ["a third video", "video three"]},
        {"image": "images/cat.jpg", "caption": "a test pattern image"},
    ]
    write_jsonl(root / "annotations.jsonl", records)
    return {"format": "jsonl", "root": str(root), "annotations": str(root / "annotations.jsonl"),
            "prompt": "Describe the video.",
            "split": split_with_train_and_test(["videos/v0.mp4", "videos/v1.mp4", "videos/v2.mp4",
                                                "images/cat.jpg"])}


def make_csv_dataset(root: Path) -> dict:
    """Generic CSV: a header, quoted captions with commas, empty cells for "no clip window"."""
    root = Path(root)
    for index in range(3):
        make_video(root / "media" / f"clip {index}.mp4", seconds=2.0, variant=index + 3)
    make_image(root / "media" / "still.jpg", variant=1)
    lines = [
        "id,video,image,start,end,caption",
        'a,media/clip 0.mp4,,,,"a clip, with a comma"',
        "b,media/clip 1.mp4,,0.5,1.5,a window of one second",
        "c,media/clip 2.mp4,,,,another clip",
        "d,,media/still.jpg,,,a still image",
    ]
    (root / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"format": "csv", "root": str(root), "annotations": str(root / "labels.csv"),
            "prompt": "Describe the video.",
            "split": split_with_train_and_test(["media/clip 0.mp4", "media/clip 1.mp4", "media/clip 2.mp4",
                                                "media/still.jpg"])}


EGO4D_UIDS = ["0a1b2c3d-0000-4000-8000-000000000001", "0a1b2c3d-0000-4000-8000-000000000002",
              "0a1b2c3d-0000-4000-8000-000000000003"]


def make_ego4d_dataset(root: Path, target: str = "summaries") -> dict:
    """An Ego4D CLI download: v2 and v1 video folders, v2/ego4d.json, v2/annotations/narration.json with tags,
    ``#Summary.`` and ``#unsure`` in the text, one video missing ``narration_pass_1``; plus a plain
    per-video ``summaries.json``. ``target`` picks summaries, narrations or summary_file."""
    root = Path(root)
    make_video(root / "v2" / "full_scale" / f"{EGO4D_UIDS[0]}.mp4", seconds=2.0, variant=5)
    make_video(root / "v2" / "full_scale" / f"{EGO4D_UIDS[1]}.mp4", seconds=2.0, variant=6)
    make_video(root / "v1" / "full_scale" / f"{EGO4D_UIDS[2]}.mp4", seconds=2.0, variant=7)  # only in v1
    write_json(root / "v2" / "ego4d.json", {"version": "v2", "videos": [
        {"video_uid": uid, "duration_sec": 2.0, "video_metadata": {"fps": 5.0, "num_frames": 10}}
        for uid in EGO4D_UIDS]})

    def narrations(*items):
        return [{"timestamp_sec": t, "timestamp_frame": int(t * 5), "narration_text": text,
                 "annotation_uid": f"a{i}"} for i, (t, text) in enumerate(items)]

    narration = {
        EGO4D_UIDS[0]: {
            "narration_pass_1": {
                "narrations": narrations((0.5, "#C C opens the Cupboard"), (1.5, "#O man X hands C a cup #unsure")),
                "summaries": [{"start_sec": 0.0, "end_sec": 2.0, "start_frame": 0, "end_frame": 10,
                               "summary_text": "#Summary C cooks in the kitchen with the Oven on"}]},
            "narration_pass_2": {
                "narrations": narrations((0.7, "#C C opens a cupboard")),
                "summaries": [{"start_sec": 0.0, "end_sec": 2.0, "summary_text": "C makes food #summary"}]},
        },
        EGO4D_UIDS[1]: {  # pass 1 is missing: pass 2 is used
            "narration_pass_2": {
                "narrations": narrations((1.0, "#C C washes the dishes  #UNSURE")),
                "summaries": [{"start_sec": 0.0, "end_sec": 1.5,
                               "summary_text": "C cleans the kitchen COUNTER . #Summary. "}]},
        },
        EGO4D_UIDS[2]: {
            "narration_pass_1": {
                "narrations": narrations((0.2, "#C C picks up a CD")),
                "summaries": [{"start_sec": 0.5, "end_sec": 2.0, "summary_text": "#summary C reads a book."}]},
        },
    }
    write_json(root / "v2" / "annotations" / "narration.json", narration)
    write_json(root / "summaries.json", {uid: f"#C C does task {i} in the Office" for i, uid in enumerate(EGO4D_UIDS)})
    return {"format": "ego4d", "root": str(root), "prompt": "Summarise what the camera wearer does.",
            "options": {"target": target, "narration_window_s": 1.0},
            "split": split_with_train_and_test(EGO4D_UIDS)}


def make_qevd_dataset(root: Path, layout: str = "fine_grained", target: str = "labels_descriptive") -> dict:
    """QEVD-FIT-300K: ``fine_grained`` (``./NNNNNNNN.mp4`` paths, official split field, feedbacks file)
    or ``ground_truth`` (dataset/ground_truth.json + manifest.json, one folder per exercise class)."""
    root = Path(root)
    names = ["00000009.mp4", "00000010.mp4", "00000123.mp4", "00004567.mp4"]
    splits = ["train", "train", "val", "test"]
    if layout == "fine_grained":
        for index, name in enumerate(names):
            make_video(root / name, variant=10 + index)
        write_json(root / "fine_grained_labels.json", [
            {"video_path": f"./{name}", "labels": [f"squats", f"rep {index}"],
             "labels_descriptive": [f"The person does squats.", f"Knees bend fully on rep {index}."],
             "split": split} for index, (name, split) in enumerate(zip(names, splits))])
        write_json(root / "feedbacks_short_clips.json", [
            {"video_path": f"./{name}", "feedbacks": [f"Keep your back straight.", f"Good depth on rep {index}!"],
             "split": split} for index, (name, split) in enumerate(zip(names, splits))])
        return {"format": "qevd", "root": str(root), "prompt": "Give feedback on the exercise.",
                "options": {"target": target}}
    classes = ["squats", "squats", "jumping_jacks", "jumping_jacks"]
    for index, (name, exercise) in enumerate(zip(names, classes)):
        make_video(root / "dataset" / exercise / name, variant=20 + index)
    write_json(root / "dataset" / "ground_truth.json", [
        {"video_path": name, "labels_descriptive": f"The person does {exercise.replace('_', ' ')}.",
         "labels": [exercise, "good form"]} for name, exercise in zip(names, classes)])
    write_json(root / "dataset" / "manifest.json", dict(zip(names, classes)))
    return {"format": "qevd", "root": str(root), "prompt": "Which exercise is this?",
            "options": {"layout": "ground_truth", "target": "labels_descriptive" if target == "feedbacks" else target},
            "split": split_with_train_and_test(names)}


NEXAR_FIELDS = ["caption", "event_type", "rule_violations", "intended_driving_action", "traffic_density",
                "visibility"]


def make_nexar_dataset(root: Path, layout: str = "metadata") -> dict:
    """Nexar dashcam: ``metadata`` (dataset/videos + metadata.jsonl, one record using the published
    alias ``intended_action``) or ``competition`` (train/<5-digit id>.mp4, train.csv with ids without
    leading zeros, train/metadata.csv, 2 s videos cut into 0.5 s windows)."""
    root = Path(root)
    if layout == "metadata":
        records = []
        for index in range(4):
            make_video(root / "dataset" / "videos" / f"{index + 1:05d}.mp4", variant=30 + index)
            record = {"file_name": f"videos/{index + 1:05d}.mp4",
                      "caption": f"The car drives past {index} parked cars.",
                      "event_type": "near_miss" if index % 2 else "normal",
                      "rule_violations": ["speeding"] if index == 1 else [],
                      "intended_driving_action": "go_straight", "traffic_density": "low", "visibility": "good"}
            if index == 2:  # a published variant's name for the same field
                record["intended_action"] = record.pop("intended_driving_action")
            records.append(record)
        write_jsonl(root / "dataset" / "metadata.jsonl", records)
        return {"format": "nexar", "root": str(root), "prompt": "Describe the driving scene as JSON.",
                "split": split_with_train_and_test([r["file_name"] for r in records])}
    ids = [822, 7, 1234]
    for index, video_id in enumerate(ids):
        make_video(root / "train" / f"{video_id:05d}.mp4", seconds=2.0, variant=40 + index)
    (root / "train.csv").write_text(
        "id,time_of_event,time_of_alert,target\n822,1.6,1.1,1\n7,,,0\n1234,0.7,0.2,1\n", encoding="utf-8")
    (root / "train" / "metadata.csv").write_text(
        "file_name,time_of_event,time_of_alert,light_conditions,weather,scene,time_to_accident\n"
        "00822.mp4,1.6,1.1,Normal,Clear,Urban,0.5\n00007.mp4,,,Dark,Rain,Highway,\n"
        "01234.mp4,0.7,0.2,Normal,Snow,Rural,0.5\n", encoding="utf-8")
    return {"format": "nexar", "root": str(root), "prompt": "Is a collision coming? Answer as JSON.",
            "options": {"layout": "competition", "window_s": 0.5},
            "split": split_with_train_and_test([f"{i:05d}" for i in ids])}


COCO_TEST = {391895: ["A man with a red helmet on a small moped on a dirt road.",
                      "Man riding a motor bike on a dirt road on the countryside.",
                      "A man riding on the back of a motorcycle."],
             522418: ["A woman wearing a net on her head cutting a cake.",
                      "A woman cutting a large white sheet cake."]}
COCO_TRAIN = {57870: ["A restaurant has modern wooden tables and chairs.",
                      "A long restaurant table with rattan rounded back chairs."],
              384029: ["A man preparing desserts in a kitchen covered in frosting."]}


def make_coco_dataset(root: Path) -> dict:
    """InternVL's COCO Karpathy files: train JSONL in conversation format (one caption per line),
    coco_karpathy_test.json and the COCO-format coco_karpathy_test_gt.json; ids come from file names."""
    root = Path(root)
    prompt = "Provide a one-sentence caption for the provided image."
    lines, line_id = [], 0
    for variant, (image_id, captions) in enumerate(COCO_TRAIN.items()):
        image = f"train2014/COCO_train2014_{image_id:012d}.jpg"
        make_image(root / image, variant=50 + variant)
        for caption in captions:
            lines.append({"id": line_id, "image": image, "conversations": [
                {"from": "human", "value": f"<image>\n{prompt}"}, {"from": "gpt", "value": caption}]})
            line_id += 1
    write_jsonl(root / "annotations" / "coco_karpathy_train_567k.jsonl", lines)
    test, annotations = [], []
    for variant, (image_id, captions) in enumerate(COCO_TEST.items()):
        image = f"val2014/COCO_val2014_{image_id:012d}.jpg"
        make_image(root / image, variant=60 + variant)
        test.append({"image": image, "caption": captions})
        annotations += [{"image_id": image_id, "id": 1000 * image_id + i, "caption": c} for i, c in enumerate(captions)]
    write_json(root / "annotations" / "coco_karpathy_test.json", test)
    write_json(root / "annotations" / "coco_karpathy_test_gt.json", {
        "info": {}, "licenses": [], "type": "captions",
        "images": [{"id": image_id, "file_name": f"COCO_val2014_{image_id:012d}.jpg"} for image_id in COCO_TEST],
        "annotations": annotations})
    return {"format": "coco", "root": str(root), "prompt": prompt}


MAKERS = {"demo": make_demo_dataset, "jsonl": make_jsonl_dataset, "csv": make_csv_dataset,
          "ego4d": make_ego4d_dataset, "qevd": make_qevd_dataset, "nexar": make_nexar_dataset,
          "coco": make_coco_dataset}
