"""Fault injection across the whole DAG (issue 9): nothing lost, nothing trusted that shouldn't be.

Kill anywhere, rerun, same result: one reduced-demo run from scratch is killed once in every step, in DAG
order, each invocation picking up where the last one died; the finished run must equal the uninterrupted
``quick_run`` byte for byte (less what differs by design: absolute working-directory paths, timings).
Kills come from outside where a step lasts long enough to be caught (training, merge, prediction) and
otherwise from ``VIDTUNE_FAULT_KILL_BEFORE_RENAME`` (vidtune.atomic), which SIGKILLs a job right before it
publishes the named output: the worst moment, with all the work done and nothing renamed.

Then: determinism, untrusted data (odd file names, paths leading out, no model code run), resource faults
(an unwritable output folder, a full disk, a hanging decoder). docs/faults.md describes what each proves.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, Workflow, quick_config
from faults_tools import Run, leftover_temporaries, output_digests, processes_holding
from fixtures_datasets import make_video, split_with_train_and_test, write_jsonl
from vidtune.samples import read_split_table, read_table

pytestmark = pytest.mark.integration

TRAIN = "results/runs/demo/train"
FINISHED = re.compile(r"Finished jobid: \d+ \(Rule: (\w+)\)")
CHECKPOINT_2 = f"{TRAIN}/checkpoints/checkpoint-2/vidtune_checkpoint_complete"


# --- Kill anywhere, rerun, same result ---------------------------------------------------------------------

def _published(workdir: Path, pattern: str) -> bool:
    return any(workdir.glob(pattern))


def _log_open_for(run: Run, log: str, seconds: float):
    """Ready once the job that logs to ``log`` has been at work for ``seconds`` (its log was opened then)."""
    path = run.workflow.path(log)

    def ready():
        try:
            opened = path.stat().st_mtime
        except FileNotFoundError:
            return None
        if opened >= run.started and time.time() - opened >= seconds:
            return {"log": log}
        return None

    return ready


def _kill_merge_while_saving(run: Run) -> None:
    # The merged model is written into a hidden .merged.tmp-* folder, checked, then renamed into place.
    folder = run.workflow.path("results/runs/demo")
    run.kill_when(lambda: {"temp": [p.name for p in folder.glob(".merged.tmp-*")]}
                  if any(folder.glob(".merged.tmp-*")) else None,
                  lambda: processes_holding(run.workflow.path("results/logs/merge/demo.log")))


def _kill_training_run_after_checkpoint(run: Run) -> None:
    # The whole run (snakemake and every job) dies once training has saved a complete checkpoint.
    def ready():
        if not run.workflow.path(CHECKPOINT_2).exists():
            return None
        checkpoints = run.workflow.path(f"{TRAIN}/checkpoints")
        return {"complete": sorted(p.parent.name for p in checkpoints.glob("*/vidtune_checkpoint_complete")),
                "final": run.workflow.path(f"{TRAIN}/final").exists()}

    run.kill_when(ready, "run", poll_s=0.001)


def _kill_prediction_mid_work(run: Run) -> None:
    log = "results/logs/predict/finetuned/demo/000.log"
    run.kill_when(_log_open_for(run, log, 1.5), lambda: processes_holding(run.workflow.path(log)))


# (step, rule, how): how is the output path suffix at whose rename the job kills itself, or a function
# that arms an outside watcher on the invocation.
KILLS = [
    ("ingest", "ingest", "datasets/demo/samples.parquet"),
    ("split", "split", "datasets/demo/split.parquet"),
    ("frame shard", "extract_frames", "frames/index/shard_000.json"),
    ("jsonl", "internvl_files", "internvl/test.jsonl"),
    ("meta", "run_meta", "runs/demo/meta.json"),
    ("check", "check_training_data", "training_data/demo/train.jsonl"),
    ("train", "train", _kill_training_run_after_checkpoint),
    ("merge", "merge", _kill_merge_while_saving),
    ("predict", "predict_finetuned", _kill_prediction_mid_work),
    ("score", "score", "runs/demo/metrics.json"),
    ("report", "report_run", "report/gallery.html"),
]


@pytest.fixture(scope="module")
def killed_chain(tmp_path_factory):
    """A reduced-demo run from scratch, killed once in every step of KILLS, then finished.

    Returns (workflow, {step: record}, last invocation). A record holds the invocation that was killed,
    the one after it (which reran the killed job), the leftovers seen right after the kill, and the logs.
    """
    workflow = Workflow(tmp_path_factory.mktemp("chain") / "work", quick_config())
    records = {}
    previous = None
    for step, rule, how in KILLS:
        env = {"VIDTUNE_FAULT_KILL_BEFORE_RENAME": how} if isinstance(how, str) else {}
        # Frame extraction does not depend on split: without --keep-going the shard kill can stop the run
        # before the split killed last time has been rerun. (Only here: elsewhere it would let the next
        # step's job finish early, unkilled, wherever that job does not depend on the one just killed.)
        keep_going = ["--keep-going"] if rule == "extract_frames" else []
        run = Run(workflow, "train_all", *keep_going, env=env)
        if not isinstance(how, str):
            how(run)
        run.wait()
        print(f"{step}: rc {run.returncode} in {time.time() - run.started:.1f} s, killed {run.killed or how}, "
              f"finished {FINISHED.findall(run.output)}")
        records[step] = {"rule": rule, "how": how, "killed": run, "temporaries": leftover_temporaries(workflow.workdir),
                         "incomplete": _incomplete_markers(workflow)}
        if previous is not None:
            records[previous]["rerun"] = run
            records[previous]["logs"] = _logs(workflow)
        previous = step
        if run.killed == "run":
            # Snakemake's lock outlives a killed snakemake; the next invocation stops and says to unlock.
            records[step]["locked"] = Run(workflow, "train_all").wait()
            records[step]["unlock"] = Run(workflow, "--unlock").wait()
    final = Run(workflow, "train_all").wait()
    records[previous]["rerun"] = final
    records[previous]["logs"] = _logs(workflow)
    return workflow, records, final


def _incomplete_markers(workflow: Workflow) -> int:
    folder = workflow.path(".snakemake/incomplete")
    return sum(1 for _ in folder.rglob("*") if _.is_file()) if folder.is_dir() else 0


def _logs(workflow: Workflow) -> dict[str, str]:
    return {p.relative_to(workflow.path("results/logs")).as_posix(): p.read_text(errors="replace")
            for p in workflow.path("results/logs").rglob("*.log")}


@pytest.mark.parametrize("step", [step for step, _, _ in KILLS])
def test_kill_step_then_rerun(killed_chain, step):
    workflow, records, _ = killed_chain
    record = records[step]
    killed, rerun, rule = record["killed"], record["rerun"], record["rule"]
    assert killed.returncode != 0, f"the {step} invocation was not killed:\n{killed.output[-3000:]}"
    how = record["how"]
    if isinstance(how, str):
        # The job died at the rename: its output never appeared, only its temporary sibling remains.
        assert f"Error in rule {rule}" in killed.output and "SIGKILL" in killed.output, killed.output[-3000:]
        assert any(f".{Path(how).name}.tmp-" in t for t in record["temporaries"]), record["temporaries"]
    else:
        assert killed.killed, f"the watcher never fired for {step}"
    assert rerun.finished(rule) >= 1, f"{rule} did not finish on the next invocation:\n{rerun.output[-3000:]}"



def test_whole_run_killed_in_training_resumes_from_its_checkpoint(killed_chain, quick_run):
    workflow, records, _ = killed_chain
    record = records["train"]
    assert record["killed"].killed == "run" and record["killed"].returncode == -9
    seen = record["killed"].seen
    assert not seen["final"] and seen["complete"], f"killed too late to prove a resume: {seen}"
    assert record["incomplete"] >= 1, "a killed snakemake leaves its running jobs marked incomplete"
    locked = record["locked"]
    assert locked.returncode != 0 and "LockException" in locked.output and "--unlock" in locked.output
    assert record["unlock"].returncode == 0
    resumed_at = int(seen["complete"][-1].rsplit("-", 1)[1])
    log = record["logs"]["train/demo.log"]
    assert f"resuming from {TRAIN}/checkpoints/checkpoint-{resumed_at} (step {resumed_at})" in log
    assert "checkpoints of the same data and settings kept for resuming" in log
    summary = json.loads(workflow.path(f"{TRAIN}/train_summary.json").read_text())
    assert summary["resumed_from"]["step"] == resumed_at
    assert summary["steps"] == 3 and summary["steps_this_run"] == 3 - resumed_at
    # The step counter continues: the same steps, losses and learning rates as without the kill.
    assert workflow.path(f"{TRAIN}/loss.json").read_bytes() == quick_run.path(f"{TRAIN}/loss.json").read_bytes()


def test_frame_cache_survives_a_killed_shard(killed_chain):
    _, records, _ = killed_chain
    log = records["frame shard"]["logs"]["extract_frames/demo/000.log"]
    # Killed after its frames were cached, before its index was published: the rerun extracts nothing.
    assert re.search(r"shard 0: (\d+) items, \1 cached, 0 to extract", log), log


def test_killed_chain_ends_complete_and_equal_to_an_uninterrupted_run(killed_chain, quick_run):
    workflow, _, final = killed_chain
    assert final.returncode == 0, final.output[-4000:]
    assert "Nothing to be done" in workflow.snakemake("-n", "train_all").stdout
    assert leftover_temporaries(workflow.workdir) == []
    ours, theirs = output_digests(workflow.workdir), output_digests(quick_run.workdir)
    assert sorted(ours) == sorted(theirs)
    by_design = {f"{TRAIN}/train_summary.json",  # timings, and what this run resumed from
                 "results/runs/metrics_table.md", "results/report/runs.html",  # the runs' training times
                 f"{TRAIN}/final/vidtune.json", "results/runs/demo/merged/vidtune.json"}  # base model path
    assert {path for path in ours if ours[path] != theirs[path]} <= by_design  # meta.json too: all relative
    for folder in (f"{TRAIN}/final", "results/runs/demo/merged"):
        ours_json, theirs_json = (json.loads(run.path(f"{folder}/vidtune.json").read_text())
                                  for run in (workflow, quick_run))
        assert {**ours_json, "base_model": None} == {**theirs_json, "base_model": None}


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    from vidtune.atomic import temp_sibling, write_json

    target = tmp_path / "out.json"
    child = subprocess.run([sys.executable, "-c", (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from vidtune.atomic import write_json\n"
        "os.environ['VIDTUNE_FAULT_KILL_BEFORE_RENAME'] = 'out.json'\n"
        "write_json(Path(sys.argv[1]), {'half': True})\n"), str(target)])
    assert child.returncode == -9 and not target.exists()
    [stale] = tmp_path.glob(".out.json.tmp-*")
    live = temp_sibling(target)  # this process's own temporary, still in use: kept by the next write
    assert not stale.exists()
    write_json(target, {"whole": True})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out.json", live.name])


# --- Determinism ---------------------------------------------------------------------------------------------

def test_independent_runs_give_identical_data_files_and_losses(killed_chain, quick_run):
    """The killed chain is a second run from scratch, in another directory, of the same config."""
    workflow, _, _ = killed_chain
    for relative in ("results/datasets/demo/samples.parquet", "results/datasets/demo/split.parquet",
                     "results/datasets/demo/internvl/train.jsonl", "results/datasets/demo/internvl/val.jsonl",
                     "results/datasets/demo/internvl/test.jsonl", "results/runs/demo/meta.json", f"{TRAIN}/loss.json",
                     f"{TRAIN}/final/adapter_config.json", f"{TRAIN}/final/adapter_model.safetensors"):
        assert workflow.path(relative).read_bytes() == quick_run.path(relative).read_bytes(), relative


DATE = re.compile(rb"20\d\d-[01]\d-[0-3]\d|20\d\d:[01]\d:[0-3]\d|\b1[6-9]\d{8}(?:\.\d+)?\b")


def test_generated_files_carry_no_timestamps(quick_run):
    stamped = []
    for relative in output_digests(quick_run.workdir):
        if relative == f"{TRAIN}/train_summary.json":
            continue  # timings (train_seconds, samples/s) are what it reports
        if DATE.search(quick_run.path(relative).read_bytes()):
            stamped.append(relative)
    assert stamped == []


# --- Untrusted data ------------------------------------------------------------------------------------------

ODD_NAMES = ["with space.mp4", "quote ' and \" .mp4", "$(touch pwned).mp4", "new\nline.mp4",
             "ünïcødé 视频 ✓.mp4", "semi;colon|pipe&`touch pwned`.mp4"]


def _odd_dataset(base: Path) -> dict:
    root = base / "odd data"
    records = []
    for variant, name in enumerate(ODD_NAMES):
        make_video(root / name, variant=variant)
        records.append({"video": name, "caption": f"$(touch pwned) <script>alert({variant})</script> clip"})
    make_video(base / "outside.mp4", variant=9)
    make_video(base / "elsewhere" / "abs.mp4", variant=8)
    (root / "link.mp4").symlink_to(base / "outside.mp4")
    records += [{"video": "../outside.mp4", "caption": "leads out"},
                {"video": "sub/../../outside.mp4", "caption": "leads out too"},
                {"video": str(base / "elsewhere" / "abs.mp4"), "caption": "absolute, elsewhere"},
                {"video": "link.mp4", "caption": "a symlink leading out"}]
    write_jsonl(root / "annotations.jsonl", records)
    return {"format": "jsonl", "root": str(root), "annotations": str(root / "annotations.jsonl"),
            "prompt": "Describe the video.", "shards": 1, "max_reject_share": 0.5,
            "split": split_with_train_and_test(ODD_NAMES)}


@pytest.fixture(scope="module")
def odd_run(quick_run, tmp_path_factory):
    """A run of its own on a dataset with hostile names and paths."""
    base = tmp_path_factory.mktemp("odd")
    workflow = quick_run.copy(base / "work")
    config = workflow.config
    dataset = _odd_dataset(base)
    dataset["frames"] = config["datasets"]["demo"]["frames"]
    config["datasets"]["odd"] = dataset
    config["runs"]["odd"] = {**json.loads(json.dumps(config["runs"]["demo"])), "datasets": ["odd"]}
    workflow.write_config(config)
    result = workflow.snakemake("train_all", check=False)
    return base, workflow, result


def test_hostile_file_names_go_through_every_step(odd_run):
    base, workflow, result = odd_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    samples = read_table(workflow.path("results/datasets/odd/samples.parquet"))
    assert sorted(s.media_path for s in samples) == sorted(ODD_NAMES)
    records = [json.loads(line) for split in ("train", "val", "test")
               for line in workflow.path(f"results/datasets/odd/internvl/{split}.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in records) == sorted(f"odd/{name}" for name in ODD_NAMES)
    assert workflow.path("results/datasets/odd/internvl/rejects.jsonl").read_text() == ""
    tested = [r for r in records if r["id"] in {s.sample_id for s, split in read_split_table(
        workflow.path("results/datasets/odd/split.parquet")) if split == "test"}]
    predictions = workflow.path("results/runs/odd/predictions/finetuned.jsonl").read_text().splitlines()
    assert len(predictions) == len(tested) > 0
    assert json.loads(workflow.path("results/runs/odd/metrics.json").read_text())
    for page in workflow.path("results").rglob("*.html"):
        assert "<script>alert" not in page.read_text(), page  # data is escaped, never markup
    # Nothing ran the names: no shell ever saw them.
    for folder in (base, REPO, Path.cwd(), Path("/tmp")):
        assert not list(folder.glob("pwned")) and not list(folder.glob("*/pwned"))
    assert not [p for p in base.rglob("pwned")]


def test_paths_leading_out_of_the_root_are_rejected_with_reasons(odd_run):
    base, workflow, result = odd_run
    rejects = [json.loads(line) for line in
               workflow.path("results/datasets/odd/ingest_rejects.jsonl").read_text().splitlines()]
    reasons = sorted(r["reason"].split(":", 1)[0] for r in rejects)
    assert reasons == ["path_escapes_root"] * 3 + ["symlink_escapes_root"]
    assert all(r["record"].startswith("line ") and r["file"].endswith("annotations.jsonl") for r in rejects)
    summary = json.loads(workflow.path("results/datasets/odd/ingest_summary.json").read_text())
    assert summary["samples"] == len(ODD_NAMES) and summary["rejected"] == 4


def test_code_never_unpickles_or_shells_out_with_data():
    """Static guard: weights come from safetensors (or weights_only loads inside transformers/peft),
    configs through yaml.safe_load, subprocesses from argument lists; no shell: rules."""
    offenders = []
    for path in [*(REPO / "src").rglob("*.py"), *(REPO / "workflow" / "scripts").glob("*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                if name in ("torch.load", "pickle.load", "pickle.loads", "yaml.load", "os.system", "os.popen",
                            "yaml.unsafe_load", "eval", "exec"):
                    offenders.append(f"{path.name}: {name}")
                if any(k.arg == "shell" and ast.unparse(k.value) != "False" for k in node.keywords):
                    offenders.append(f"{path.name}: {name}(shell=...)")
                # No model folder's own Python runs (original-layout InternVL folders are converted).
                if any(k.arg == "trust_remote_code" and ast.unparse(k.value) != "False" for k in node.keywords):
                    offenders.append(f"{path.name}: {name}(trust_remote_code={ast.unparse(node)})")
    for rules in [REPO / "Snakefile", *(REPO / "rules").glob("*.smk")]:
        if re.search(r"^\s+shell:", rules.read_text(), re.MULTILINE):
            offenders.append(f"{rules.name}: shell:")
    assert offenders == []


def test_a_model_folder_with_only_pickled_weights_is_refused_at_load(tmp_path):
    """The runtime guard behind the parse-time check in test_config.py (used by the predict CLI too)."""
    from vidtune.errors import ModelError
    from vidtune.modeling import load_model

    (tmp_path / "config.json").write_text('{"model_type": "internvl"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ModelError, match="no .safetensors weights"):
        load_model(tmp_path)


# --- Resource faults -----------------------------------------------------------------------------------------

def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here (needs root with CAP_SYS_ADMIN): {done.stderr.strip()}")


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], check=True)


@pytest.fixture
def run_copy(quick_run, tmp_path):
    return quick_run.copy(tmp_path / "work")


def test_unwritable_output_folder_fails_clearly_and_recovers(run_copy):
    folder = run_copy.path("results/report")
    for page in folder.iterdir():
        page.unlink()
    _mount("--bind", str(folder), str(folder))
    try:
        _mount("-o", "remount,bind,ro", str(folder), str(folder))
        failed = run_copy.snakemake("train_all", check=False)
        output = failed.stdout + failed.stderr
        # Snakemake itself stops before the job starts, naming the folder and the cause.
        assert failed.returncode != 0, output[-3000:]
        assert "Read-only file system: 'results/report/" in output
        assert FINISHED.findall(output) == []  # nothing else was touched
        assert list(folder.iterdir()) == []
    finally:
        _umount(folder)
    fixed = run_copy.snakemake("train_all")
    assert FINISHED.findall(fixed.stdout + fixed.stderr) == ["report_overview", "train_all"]
    assert sorted(p.name for p in folder.iterdir()) == ["data_summary.html", "runs.html"]


def _force_new_frames(workflow: Workflow, **frames) -> None:
    config = workflow.config
    config["datasets"]["demo"]["frames"].update(frames)
    workflow.write_config(config)


def _jsonl_ids(workflow: Workflow) -> list[str]:
    return sorted(json.loads(line)["id"] for split in ("train", "val", "test") for line in
                  workflow.path(f"results/datasets/demo/internvl/{split}.jsonl").read_text().splitlines())


def test_disk_full_during_frame_extraction(run_copy, quick_run):
    cache = run_copy.path("results/frames/cache")
    _force_new_frames(run_copy, num_frames=6)  # every video's frames are extracted again
    _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(cache))
    try:
        failed = run_copy.snakemake("prepare_all", check=False)
        output = failed.stdout + failed.stderr
        assert failed.returncode != 0 and "Error in rule extract_frames" in output, output[-3000:]
        assert "No space left on device" in output
        # The shard that hit the full disk published no index; one that fit has only good items in it.
        indexes = list(run_copy.path("results/datasets/demo/frames/index").glob("*.json"))
        assert len(indexes) < 2
        assert all(item["status"] == "ok" for index in indexes
                   for item in json.loads(index.read_text())["items"].values())
        complete = [p for p in cache.glob("*/*") if not p.name.startswith(".")]
        assert all((p / "frames.json").is_file() for p in complete)  # only complete folders under a key
        assert not list(cache.rglob(".*.tmp-*"))
    finally:
        _umount(cache)
    fixed = run_copy.snakemake("prepare_all")
    assert "extract_frames" in FINISHED.findall(fixed.stdout + fixed.stderr)
    assert _jsonl_ids(run_copy) == _jsonl_ids(quick_run)


def test_hanging_decoder_is_a_reject_with_a_reason_and_the_rerun_finishes(run_copy, quick_run):
    _force_new_frames(run_copy, num_frames=5, timeout_s=3.0)
    run_copy.snakemake("prepare_all", "--until", "frame_manifest")  # content signatures read before the swap
    video = run_copy.path("results/demo/data/clip_003.mp4")
    original = video.read_bytes()
    video.unlink()
    os.mkfifo(video)  # a reader blocks on it forever: a decoder that hangs
    started = time.time()
    hung = run_copy.snakemake("prepare_all")
    assert time.time() - started < 120
    rejects = [json.loads(line) for line in
               run_copy.path("results/datasets/demo/internvl/rejects.jsonl").read_text().splitlines()]
    assert [(r["record"], r["reason"]) for r in rejects] == \
        [("demo/clip_003.mp4", "decode_timeout: timed out after 3 s (hanging decode)")]
    assert len(_jsonl_ids(run_copy)) == len(_jsonl_ids(quick_run)) - 1
    # The fix: the real file back, and the shard asked again (a timeout is not cached).
    video.unlink()
    video.write_bytes(original)
    fixed = run_copy.snakemake("--forcerun", "frame_manifest", "extract_frames", "--", "prepare_all")
    assert re.search(r"1 to extract", "".join(
        p.read_text() for p in run_copy.path("results/logs/extract_frames/demo").glob("*.log")))
    assert _jsonl_ids(run_copy) == _jsonl_ids(quick_run)
    assert hung.returncode == fixed.returncode == 0
