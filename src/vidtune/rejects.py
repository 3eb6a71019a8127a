"""Why a record was left out: the one set of reason classes that every stage's rejects use.

A reject's reason reads ``<class>: <detail>``: the class is one of :data:`REASONS` (summaries count
rejects by it, so counts add up across records and stages), the detail is the free text that names this
record's own numbers and the fix. Ingestion, frame extraction and the training-data check build reasons
with :func:`reason`.
"""

from __future__ import annotations

REASONS = {
    # ingestion: the annotation record
    "malformed_record": "a record that does not parse, or a field of the wrong type",
    "missing_field": "a field the format needs is absent",
    "duplicate_id": "a second record with the same sample id (the first keeps it)",
    "empty_target": "the target is empty or whitespace",
    "path_escapes_root": "the media path leads outside the dataset root",
    "symlink_escapes_root": "the media path resolves, through a symlink, outside the dataset root",
    # the media file (ingestion or frame extraction)
    "missing_media": "the media file does not exist",
    "empty_media": "the media file has zero bytes",
    "unreadable_media": "the file cannot be opened as a video or image (corrupt, unknown format, no video)",
    "damaged_media": "the file opens, but is truncated or frames in the window cannot be decoded",
    "zero_length_media": "the video's duration is 0",
    # the clip window
    "bad_clip_window": "start < 0, start not before end, or a window on an image",
    "clip_outside_duration": "the window starts at or after the video's end",
    "too_few_frames": "the window holds fewer frames than frames.min_frames",
    # the decoder (frame extraction)
    "decode_timeout": "decoding ran past frames.timeout_s",
    "decoder_crashed": "the decoder process died",
    "extraction_failed": "an unexpected error while extracting (the message says which)",
    # the training-data check (per run: the model's tokenizer and max_seq_length)
    "no_answer": "the record has no gpt turn (or an empty one) to learn",
    "placeholder_mismatch": "the human turn has another number of media placeholders than the record has media",
    "over_length": "text plus visual tokens exceed training.max_seq_length",
}
# The class of a reason written before reasons had classes (an old cached frame record).
UNCLASSIFIED = "unclassified"


def reason(code: str, detail: str) -> str:
    """A reject reason: ``<code>: <detail>``; ``code`` must be one of :data:`REASONS`."""
    if code not in REASONS:
        raise ValueError(f"unknown reject reason class {code!r}; add it to vidtune.rejects.REASONS")
    return f"{code}: {detail}"


def reason_code(text: str) -> str:
    """The class of a reject reason (``missing_media: ...`` -> ``missing_media``)."""
    code = text.split(":", 1)[0].strip()
    return code if code in REASONS else UNCLASSIFIED
