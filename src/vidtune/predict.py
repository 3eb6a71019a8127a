"""Captions from a base, adapter or merged model, asked exactly as in training.

Library: :func:`predict_records` (JSONL records -> ``{"id", "prediction"}``). Command line::

    python -m vidtune.predict --model DIR [--adapter DIR] --video FILE_OR_FRAME_FOLDER [--prompt TEXT] [--dataset D]
    python -m vidtune.predict --model DIR [--adapter DIR] --image FILE [--prompt TEXT] [--dataset D]
    python -m vidtune.predict --model DIR [--adapter DIR] --jsonl FILE --out FILE [--root DIR] [--dataset D]

Frames, prompt and tiling are those of one training dataset, from the ``vidtune.json`` training stored
beside the model (one entry per dataset of the run; defaults for a plain base model). A model trained on
datasets with different settings is asked which with ``--dataset``; the workflow names each record's.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from vidtune.atomic import read_jsonl, write_jsonl
from vidtune.config import schema_defaults
from vidtune.errors import VidtuneError, command_line
from vidtune.internvl_format import record_media_paths, record_text
from vidtune.families import Media, family_for_folder
from vidtune.modeling import (DATASET_DEFAULTS, collate, frame_times, job_device, load_adapter_model, load_images,
                              load_model, load_record_media, move_batch, read_run_settings)

EVALUATION_DEFAULTS = schema_defaults("evaluation")
log = logging.getLogger(__name__)


# One sample to answer: its media (frames or images, with the dataset's tiling) and its prompt.
Sample = tuple[Media, str]


class Predictor:
    """A loaded model + processor + each training dataset's prompt/frame/tiling settings, answering batches
    of samples.

    ``datasets`` gives settings by dataset name over those stored at training (the workflow passes each
    dataset's tiling from the config, so the base model is asked exactly as the finetuned one).
    """

    def __init__(self, model_dir: Path, adapter_dir: Path | None = None, evaluation: dict | None = None,
                 datasets: dict[str, dict] | None = None):
        stored = read_run_settings(adapter_dir, model_dir).get("datasets", {})
        self.datasets = {name: {**stored.get(name, {}), **(datasets or {}).get(name, {})}
                         for name in {*stored, *(datasets or {})}}
        self.model_dir = Path(adapter_dir or model_dir)
        self.evaluation = {**EVALUATION_DEFAULTS, **(evaluation or {})}
        self.device, self.dtype = job_device(model_dir)
        self.family = family_for_folder(model_dir)
        if adapter_dir is not None:
            self.model = load_adapter_model(model_dir, adapter_dir, dtype=self.dtype, device=self.device)
        else:
            self.model = load_model(model_dir, dtype=self.dtype, device=self.device)
        self.processor = self.family.load_processor(adapter_dir or model_dir)
        self.model.eval()
        # The checkpoint's own stop tokens (a converted checkpoint's include its template's end of answer, as
        # the original chat() stops there), else the tokenizer's end of sequence.
        self.stop_ids = self.model.generation_config.eos_token_id or self.processor.tokenizer.eos_token_id
        log.info("predicting on %s in %s", self.device, str(self.dtype).removeprefix("torch."))

    def settings(self, dataset: str | None = None) -> dict:
        """Prompt, frames and tiling for samples of ``dataset`` (None: the model's one set of settings; a
        plain base model's are the config's defaults)."""
        defaults = {"prompt": DATASET_DEFAULTS["prompt"], "frames": {},
                    "max_dynamic_patch": DATASET_DEFAULTS["max_dynamic_patch"]}
        if not self.datasets:
            return defaults
        if dataset is None:
            distinct = {json.dumps(settings, sort_keys=True): settings for settings in self.datasets.values()}
            if len(distinct) > 1:
                raise VidtuneError(f"the model was trained on datasets with different prompt, frame or tiling "
                                   f"settings ({', '.join(sorted(self.datasets))})", file=self.model_dir,
                                   fix="name the dataset whose settings to use (--dataset)")
            return {**defaults, **next(iter(distinct.values()))}
        if dataset not in self.datasets:
            raise VidtuneError(f"the model was not trained on dataset {dataset!r}", file=self.model_dir,
                               fix=f"use one of: {', '.join(sorted(self.datasets))}")
        return {**defaults, **self.datasets[dataset]}

    def record_samples(self, records: Sequence[dict], root: Path, datasets: Sequence[str | None]) -> list[Sample]:
        """The samples of records (media relative to root), each with its dataset's tiling."""
        return [(load_record_media(record, root, int(self.settings(dataset)["max_dynamic_patch"])),
                 record_text(record).prompt)
                for record, dataset in zip(records, datasets, strict=True)]

    def inputs(self, samples: Sequence[Sample]) -> list[dict]:
        """What the model is fed for each sample: the family's encoding of its media and prompt."""
        return [self.family.encode(self.processor, media, prompt) for media, prompt in samples]

    def answer(self, samples: Sequence[Sample]) -> list[str]:
        """Greedy (unless configured otherwise) answers for the samples."""
        tokenizer = self.processor.tokenizer
        answers: list[str] = []
        size = self.evaluation["batch_size"]
        for start in range(0, len(samples), size):
            batch = move_batch(collate(self.inputs(samples[start:start + size]), tokenizer.pad_token_id,
                                       padding_side="left", sequence_keys=self.family.sequence_keys),
                               self.device, self.dtype)
            torch.manual_seed(0)
            with torch.no_grad():
                output = self.model.generate(
                    **batch, max_new_tokens=self.evaluation["max_new_tokens"],
                    do_sample=self.evaluation["do_sample"], num_beams=self.evaluation["num_beams"],
                    pad_token_id=tokenizer.pad_token_id, eos_token_id=self.stop_ids,
                    **({"temperature": self.evaluation["temperature"], "top_p": self.evaluation["top_p"]}
                       if self.evaluation["do_sample"] else {}))
            new_tokens = output[:, batch["input_ids"].shape[1]:].cpu()
            answers += [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        return answers


def predict_records(model_dir: Path, records: list[dict], root: Path, evaluation: dict,
                    adapter_dir: Path | None = None,
                    datasets: str | Sequence[str] | None = None,
                    dataset_settings: dict[str, dict] | None = None) -> list[dict]:
    """``{"id", "prediction"}`` for each JSONL record (media relative to root), in order.

    ``datasets`` names the dataset each record comes from (one name for all), whose tiling it is asked
    with; ``dataset_settings`` gives settings by dataset over those stored at training (see
    :class:`Predictor`). Logs progress every few percent and the throughput (samples/s, without the model's
    loading).
    """
    predictor = Predictor(Path(model_dir), None if adapter_dir is None else Path(adapter_dir), evaluation, dataset_settings)
    names = [datasets] * len(records) if datasets is None or isinstance(datasets, str) else list(datasets)
    size = predictor.evaluation["batch_size"]
    answers: list[str] = []
    started, reported = time.perf_counter(), 0
    for start in range(0, len(records), size):  # media of one batch in memory at a time
        answers += predictor.answer(predictor.record_samples(records[start:start + size], root,
                                                             names[start:start + size]))
        if len(answers) - reported >= max(1, len(records) // 20) or len(answers) == len(records):
            reported = len(answers)
            seconds = time.perf_counter() - started
            log.info("%d of %d samples, %.2f samples/s", reported, len(records), reported / seconds)
    return [{"id": record.get("id"), "prediction": answer} for record, answer in zip(records, answers)]


def video_frames(path: Path, frames_config: dict) -> tuple[list, tuple[float, ...] | None]:
    """Frames of a video file, sampled as in training, with their times; a folder of extracted frames is read
    as is (with their times where vidtune extracted them)."""
    if path.is_dir():
        paths = record_media_paths({"video": path.name + "/"}, path.parent)
        return load_images(paths, str(path)), frame_times(paths)
    from vidtune.frames import FrameSettings, read_frames

    frames, times = read_frames(path, FrameSettings.from_config(frames_config))
    return frames, tuple(times)


@command_line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vidtune.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="base or merged model folder")
    parser.add_argument("--adapter", type=Path, help="a trained LoRA adapter folder (training's final/)")
    media = parser.add_mutually_exclusive_group(required=True)
    media.add_argument("--video", type=Path, help="a video file, or a folder of extracted frames")
    media.add_argument("--image", type=Path, help="an image file")
    media.add_argument("--jsonl", type=Path, help="JSONL records (InternVL's format) to caption")
    parser.add_argument("--out", type=Path, help="with --jsonl: where to write {id, prediction} lines")
    parser.add_argument("--root", type=Path, help="with --jsonl: media root (default: the JSONL's folder)")
    parser.add_argument("--prompt", help="the question (default: the prompt the model was trained with)")
    parser.add_argument("--dataset", help="the training dataset whose prompt, frames and tiling to use (needed "
                                          "when the model was trained on datasets with different ones)")
    parser.add_argument("--max-new-tokens", type=int, default=EVALUATION_DEFAULTS["max_new_tokens"])
    args = parser.parse_args(argv)
    if args.jsonl and not args.out:
        parser.error("--jsonl needs --out")
    evaluation = {"max_new_tokens": args.max_new_tokens}
    for flag, path in (("--video", args.video), ("--image", args.image), ("--jsonl", args.jsonl)):
        if path is not None and not path.exists():  # before the model loads, which can take minutes
            raise VidtuneError("no such file or folder", file=path, fix=f"check the {flag} path")
    if args.jsonl:
        records = read_jsonl(args.jsonl)
        predictions = predict_records(args.model, records, args.root or args.jsonl.parent, evaluation,
                                      args.adapter, datasets=args.dataset)
        write_jsonl(args.out, predictions)
        print(f"{len(predictions)} predictions written to {args.out}")
        return 0
    predictor = Predictor(args.model, args.adapter, evaluation)
    settings = predictor.settings(args.dataset)
    prompt, tiling = args.prompt or settings["prompt"], int(settings["max_dynamic_patch"])
    if args.video:
        frames, times = video_frames(args.video, settings["frames"])
        sample = (Media(frames, "video", times, tiling), prompt)
    else:
        sample = (Media(load_images([args.image], str(args.image)), "image", None, tiling), prompt)
    print(predictor.answer([sample])[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
