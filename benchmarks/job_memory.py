"""Peak memory of the model jobs (build_model, check_training_data, train, merge, predict_*) against the size of
the model's weights: the figures behind vidtune.resources' memory factors (docs/training.md, "Job memory").

Runs `train_all` of two configs on this machine's CPU, each in a scratch working directory, and samples every
rule script's peak resident set (VmHWM in /proc/<pid>/status, every 0.1 s) while it runs:

* `demo`: the embedded demo's tiny model (about 1 MB of float32 weights), 8 clips;
* `internvl3-1b-2l`: the InternVL3-1B architecture with 2 text and 2 vision layers and the published
  151,674-token vocabulary (about 0.4 GB of bf16 weights), 4 frames of 448 pixels per clip.

The tiny model's peaks are the fixed cost of a job (Python, torch, transformers, the data); the slope between
the two models is the memory per byte of weights. Prints one line per rule and model, then one JSON object.
Usage: python benchmarks/job_memory.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

from conftest import load_default_config, quick_config  # noqa: E402
from vidtune.resources import folder_weight_bytes  # noqa: E402

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
MEASURED = ("build_model", "check_training_data", "train", "merge", "predict")
SCRIPT = re.compile(r"\.snakemake/scripts/tmp[^/ ]*\.(\w+)\.py")


def configs() -> dict[str, dict]:
    demo = quick_config()
    large = quick_config(load_default_config())
    large["demo"] = {"num_videos": 8, "seconds": 1, "size": 448, "fps": 10}
    large["datasets"]["demo"]["frames"] = {"policy": "uniform", "num_frames": 4, "short_side": 448}
    large["models"] = {"internvl3-1b-2l": {"architecture": {"name": "internvl3-1b", "text_layers": 2,
                                                            "vision_layers": 2}}}
    large["runs"]["demo"]["model"] = "internvl3-1b-2l"
    large["runs"]["demo"]["training"].update({"batch_size": 1, "max_steps": 2})
    large["runs"]["demo"]["evaluation"].update({"batch_size": 2, "max_new_tokens": 4})
    return {"demo": demo, "internvl3-1b-2l": large}


def sample_peaks(stop: threading.Event, peaks: dict[int, tuple[str, int]]) -> None:
    """pid -> (script, peak RSS in kB) of every running Snakemake rule script, until stop is set."""
    while not stop.is_set():
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                match = SCRIPT.search(cmdline)
                if not match:
                    continue
                status = Path(entry.path, "status").read_text()
            except OSError:
                continue
            hwm = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
            if hwm:
                peaks[int(entry.name)] = (match.group(1), int(hwm.group(1)))
        time.sleep(0.1)


def measure(name: str, config: dict, workdir: Path) -> dict:
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    peaks: dict[int, tuple[str, int]] = {}
    stop = threading.Event()
    sampler = threading.Thread(target=sample_peaks, args=(stop, peaks), daemon=True)
    sampler.start()
    start = time.perf_counter()
    result = subprocess.run([SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2",
                             "train_all"], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    stop.set()
    sampler.join()
    if result.returncode != 0:
        raise SystemExit(f"{name}: snakemake failed:\n{result.stderr[-6000:]}")
    model = next(iter(config["models"]))
    weights = folder_weight_bytes(workdir / "results" / "models" / model)
    rules: dict[str, int] = {}
    for script, kb in peaks.values():
        if script in MEASURED:
            rules[script] = max(rules.get(script, 0), kb)
    return {"model": name, "weight_bytes": weights, "wall_s": round(time.perf_counter() - start, 1),
            "peak_rss_mb": {rule: round(kb / 1024) for rule, kb in sorted(rules.items())}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="work here and keep the runs (default: a temporary folder)")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="vidtune-job-memory-"))
    results = [measure(name, config, root / name) for name, config in configs().items()]
    for result in results:
        for rule, mb in result["peak_rss_mb"].items():
            weights = result["weight_bytes"] / 2**20
            print(f"{result['model']:>16} {rule:>20}: peak {mb:6d} MB  (weights {weights:.1f} MB)")
    small, large = results
    slopes = {}
    for rule in MEASURED:
        if rule in small["peak_rss_mb"] and rule in large["peak_rss_mb"]:
            extra_mb = large["peak_rss_mb"][rule] - small["peak_rss_mb"][rule]
            slopes[rule] = round(extra_mb * 2**20 / (large["weight_bytes"] - small["weight_bytes"]), 2)
    print(json.dumps({"runs": results, "mb_per_weight_mb": slopes}))


if __name__ == "__main__":
    main()
