"""InternVL's training-data format, written and read in one place: records, JSONL files and meta.json.

InternVL (``internvl_chat/shell/data/*.json`` and its chat-data-format docs): one JSON Lines file per split
and dataset. A video is written in one of two forms (the dataset's ``internvl_video_form``)::

    {"id": "demo/clip_000.mp4", "image": ["frames/cache/ab/<key>/frames/frame_000001.jpg", ...],
     "conversations": [{"from": "human", "value": "Frame-1: <image>\\nFrame-2: <image>\\n<prompt>"},
                       {"from": "gpt", "value": "<target>"}]}
    {"id": "demo/clip_000.mp4", "video": "frames/cache/ab/<key>/frames/",
     "conversations": [{"from": "human", "value": "<video>\\n<prompt>"}, {"from": "gpt", "value": "<target>"}]}

``images`` (the default) is InternVL's multi-image form with the ``Frame-<i>: <image>`` lines its own video
expansion writes; its trainer loads it with PIL alone. ``video`` names the frame folder, which InternVL's
trainer reads only through the optional ``petrel_client`` loader. Either way the folder holds only the
frames ``frame_<n>.jpg``, and it already covers the clip window, so records carry no ``clip``. Images::

    {"id": "coco/test/391895", "image": "<path>", "width": 640, "height": 480, "conversations": [...]}

Record paths are relative to a root folder (the results folder): frames always; an image from a dataset
whose root is relative is named from there too (``../data/...``), one whose root is absolute stays
absolute. ``meta.json`` maps dataset names to entries (``root``, ``annotation``, ``data_augment``,
``max_dynamic_patch``, ``repeat_time``, ``length``) whose ``root`` and ``annotation`` are relative to
meta.json's own folder, so moving the project or the results folder leaves every file loadable; InternVL's
trainer resolves them against its working directory, so it runs from meta.json's folder. vidtune adds
``data_settings`` (ignored by InternVL): the prompt and frame sampling a trained model must reproduce.

This module imports neither torch nor transformers: the report and the data steps read records with it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from vidtune.atomic import read_json, read_jsonl, write_json
from vidtune.config import schema_defaults
from vidtune.errors import DataError

VIDEO_FORMS = ("images", "video")
VIDEO_PLACEHOLDER = "<video>"
IMAGE_PLACEHOLDER = "<image>"
_FRAME_NUMBER = re.compile(r"_(\d+)\.jpe?g$", re.IGNORECASE)
_FRAME_LABEL = re.compile(r"^Frame-?\d+: (?=<image>)", re.MULTILINE)  # InternVL's frame label before <image>


# --- Writing records ---------------------------------------------------------------------------------------

def conversation(prompt: str, target: str, placeholder: str) -> list[dict]:
    return [{"from": "human", "value": f"{placeholder}\n{prompt}"}, {"from": "gpt", "value": target}]


def frame_lines(count: int) -> str:
    """The placeholders of ``count`` frames as InternVL's video expansion writes them."""
    return "\n".join(f"Frame-{number}: {IMAGE_PLACEHOLDER}" for number in range(1, count + 1))


def portable_path(path: str | os.PathLike, start: str | os.PathLike) -> str:
    """``path`` relative to the folder ``start``, unless it is absolute and outside ``start`` (a dataset
    elsewhere on disk, which moves with neither the project nor the results folder)."""
    if os.path.isabs(path) and os.path.commonpath([path, os.path.abspath(start)]) != os.path.abspath(start):
        return str(path)
    return os.path.relpath(path, start)


def image_record(record_id: str, image: str, width: int, height: int, prompt: str, target: str) -> dict:
    return {"id": record_id, "image": image, "width": width, "height": height,
            "conversations": conversation(prompt, target, IMAGE_PLACEHOLDER)}


def frame_list_record(record_id: str, frames: list[str], prompt: str, target: str) -> dict:
    """A video as InternVL's multi-image form: the frames listed, one ``Frame-<i>: <image>`` line each."""
    return {"id": record_id, "image": list(frames),
            "conversations": conversation(prompt, target, frame_lines(len(frames)))}


def frame_folder_record(record_id: str, folder: str, prompt: str, target: str) -> dict:
    """A video as InternVL's ``video`` form: the frame folder and one ``<video>``."""
    return {"id": record_id, "video": folder.rstrip("/") + "/",
            "conversations": conversation(prompt, target, VIDEO_PLACEHOLDER)}


def video_record(record_id: str, frames_dir: str, frames: list[str], video_form: str, prompt: str,
                 target: str) -> dict:
    """A video's record in the dataset's ``internvl_video_form``."""
    if video_form == "video":
        return frame_folder_record(record_id, frames_dir, prompt, target)
    if video_form != "images":
        raise ValueError(f"internvl_video_form must be one of {VIDEO_FORMS}, not {video_form!r}")
    return frame_list_record(record_id, [f"{frames_dir}/{name}" for name in frames], prompt, target)


# --- Reading records ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RecordText:
    """The text side of one InternVL JSONL record."""

    media_type: str
    prompt: str          # the human turn without media placeholders (and without ``Frame-<i>:`` labels)
    target: str | None   # the first gpt turn, if any
    placeholders: int    # how many media placeholders the human turn had
    media_count: int     # how many it should have: the frames of an ``image`` list, else 1


def record_text(record: dict, file: str | None = None) -> RecordText:
    """Reads both video forms: a frame folder (``video``, one ``<video>``) and a frame list (``image`` as a
    list, one ``<image>`` per frame, each on a ``Frame-<i>: <image>`` line as InternVL's expansion writes)."""
    record_id = str(record.get("id"))
    if "video" in record:
        media_type, placeholder, count = "video", VIDEO_PLACEHOLDER, 1
    elif isinstance(record.get("image"), list):
        media_type, placeholder, count = "video", IMAGE_PLACEHOLDER, len(record["image"])
    elif "image" in record:
        media_type, placeholder, count = "image", IMAGE_PLACEHOLDER, 1
    else:
        raise DataError("record has neither video nor image", file=file, record=record_id,
                        fix="write InternVL JSONL with a video (frame folder) or image key")
    conversations = record.get("conversations") or []
    human = next((turn["value"] for turn in conversations if turn.get("from") == "human"), None)
    if human is None:
        raise DataError("record has no human turn", file=file, record=record_id)
    gpt = next((turn["value"] for turn in conversations if turn.get("from") == "gpt"), None)
    placeholders = human.count(placeholder)
    prompt = _FRAME_LABEL.sub("", human).replace(placeholder, "").strip()
    return RecordText(media_type, prompt, gpt, placeholders, count)


def _frame_number(path: Path) -> int:
    match = _FRAME_NUMBER.search(path.name)
    return int(match.group(1)) if match else -1


def record_media_paths(record: dict, root: str | Path) -> list[Path]:
    """A video record's frames (a folder's sorted by their ``_<number>.jpg`` suffix, a list's in its order)
    or an image record's image; empty when any is missing."""
    root = Path(root)
    if "video" in record:
        folder = root / record["video"]
        if not folder.is_dir():
            return []
        frames = [path for path in folder.iterdir() if _frame_number(path) >= 0]
        return sorted(frames, key=_frame_number)
    names = record["image"] if isinstance(record["image"], list) else [record["image"]]
    paths = [root / name for name in names]
    return paths if paths and all(path.is_file() for path in paths) else []


# --- meta.json ---------------------------------------------------------------------------------------------

def repeat_time(value: float) -> int | float:
    """A repeat_time as InternVL asserts it: an int when 1 or more, a share of the data below."""
    if value >= 1:
        if value != int(value):
            raise ValueError(f"repeat_time above 1 must be a whole number, not {value}")
        return int(value)
    return value


def data_settings(cfg: dict) -> dict:
    """The prompt and frame sampling a trained model must reproduce; the decode timeout is left out, so
    changing it does not make training stale."""
    settings = {key: cfg[key] for key in ("prompt", "frames") if key in cfg}
    if "frames" in settings:
        settings["frames"] = {k: v for k, v in settings["frames"].items() if k != "timeout_s"}
    return settings


def meta_entry(annotation: Path, length: int, cfg: dict, *, root: Path, meta_dir: Path) -> dict:
    """One dataset's entry in InternVL's meta.json: ``root`` (the folder its records' paths are relative
    to) and ``annotation`` relative to ``meta_dir``, the folder meta.json is in.

    ``data_settings`` (ignored by InternVL's trainer) carries the prompt and frame sampling into the trained
    model's folder, so inference on a new video samples frames exactly as training did.
    """
    return {
        "root": os.path.relpath(root, meta_dir) + os.sep,  # both in the results folder: always relative
        "annotation": os.path.relpath(annotation, meta_dir),
        "data_augment": False,
        "max_dynamic_patch": int(cfg["max_dynamic_patch"]),
        "repeat_time": repeat_time(cfg["repeat_time"]),
        "length": int(length),
        "data_settings": data_settings(cfg),
    }


def write_meta(run_datasets: list[tuple[str, Path, int, dict]], out_path: Path, *, root: Path) -> dict:
    """InternVL's meta.json mixing ``(name, jsonl path, length, dataset cfg)`` entries, whose records'
    paths are relative to ``root`` (the results folder); returns it."""
    meta = {name: meta_entry(Path(jsonl), length, cfg, root=root, meta_dir=Path(out_path).parent)
            for name, jsonl, length, cfg in run_datasets}
    if len(meta) != len(run_datasets):
        raise DataError("a dataset appears twice in one run", file=str(out_path),
                        fix="list each dataset once in runs.<run>.datasets")
    write_json(out_path, meta)
    return meta


@dataclasses.dataclass(frozen=True)
class MetaDataset:
    """One meta.json entry, its paths resolved against meta.json's folder (wherever the reader runs)."""

    name: str
    annotation: Path
    root: Path
    max_dynamic_patch: int
    repeat_time: float
    data_settings: dict
    entry: dict  # as written, for rewriting it

    def records(self) -> list[dict]:
        return read_jsonl(self.annotation)

    @property
    def model_settings(self) -> dict:
        """What a model trained on this dataset must reproduce for it: prompt, frame sampling and tiling
        (kept per dataset in the trained model's vidtune.json)."""
        return {**self.data_settings, "max_dynamic_patch": self.max_dynamic_patch}


def read_meta(meta_path: str | Path) -> list[MetaDataset]:
    """The datasets of an InternVL meta.json, in its order; a missing key or file fails naming it."""
    meta_path = Path(meta_path)
    try:
        meta = read_json(meta_path)
    except OSError as error:
        raise DataError(f"cannot read meta.json: {error}", file=str(meta_path)) from error
    if not isinstance(meta, dict) or not meta:
        raise DataError("meta.json must map dataset names to entries", file=str(meta_path))
    defaults = schema_defaults("dataset")
    datasets = []
    for name, entry in meta.items():
        if not isinstance(entry, dict) or "annotation" not in entry:
            raise DataError(f"entry {name!r} has no annotation", file=str(meta_path),
                            fix="give every dataset entry an annotation (its JSONL file)")
        settings = {"prompt": defaults["prompt"], "frames": {}, **entry.get("data_settings", {})}
        datasets.append(MetaDataset(
            name, Path(os.path.normpath(meta_path.parent / entry["annotation"])),
            Path(os.path.normpath(meta_path.parent / entry.get("root", "."))),
            int(entry.get("max_dynamic_patch", defaults["max_dynamic_patch"])),
            float(entry.get("repeat_time", 1)), settings, entry))
    return datasets
