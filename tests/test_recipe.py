"""The training recipe is configurable and means what it says (issue 24): warmup_ratio as a whole number of
steps, the learning-rate schedule and optimizer as settings, and any further TrainingArguments key under
trainer_args, checked against the installed transformers when the workflow is parsed."""

from __future__ import annotations

import json
import logging
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
from conftest import Workflow, quick_config
from transformers.trainer_utils import SchedulerType
from transformers.training_args import OptimizerNames

from vidtune.config import _schema
from vidtune.errors import ConfigError
from vidtune.reach import ANY, reach_table, settings_for
from vidtune.tiny_model import write_synthetic_dataset
from vidtune.train import train, training_arguments
from vidtune.training.settings import TrainingSettings, check_trainer_args, check_training

torch.set_num_threads(1)
WHERE = "runs.r.training.trainer_args"


def test_warmup_ratio_is_a_whole_number_of_steps():
    settings = TrainingSettings.from_config({"epochs": 2, "batch_size": 2, "warmup_ratio": 1.0})
    assert settings.total_steps(7) == 8 and settings.warmup_steps(7) == 8  # 1.0: every step warms up
    assert TrainingSettings.from_config({"epochs": 2, "batch_size": 2, "warmup_ratio": 0.3}).warmup_steps(7) == 3
    assert TrainingSettings.from_config({"warmup_ratio": 0.0}).warmup_steps(100) == 0
    assert TrainingSettings.from_config({"max_steps": 5, "warmup_ratio": 1.0}).warmup_steps(100) == 5
    two_gpus = TrainingSettings.from_config({"batch_size": 2, "gpus": 2, "gradient_accumulation_steps": 2})
    assert two_gpus.total_steps(9) == 2  # 5 batches dealt to 2 processes: 3 each, 2 optimizer steps


def test_training_arguments_carry_the_recipe(tmp_path):
    settings = TrainingSettings.from_config({
        "lr_scheduler_type": "linear", "optim": "adamw_torch", "warmup_ratio": 0.5, "epochs": 1, "batch_size": 1,
        "trainer_args": {"max_grad_norm": 0.25, "adam_beta2": 0.95, "disable_tqdm": False,
                         "lr_scheduler_kwargs": {}}})
    args = training_arguments(settings, tmp_path, 10, logging.getLogger("test"))
    assert (args.lr_scheduler_type, args.optim) == ("linear", "adamw_torch")
    assert args.warmup_steps == 5 and isinstance(args.warmup_steps, int)
    assert (args.max_grad_norm, args.adam_beta2, args.disable_tqdm) == (0.25, 0.95, False)
    assert args.report_to in ("none", [], ["none"])
    paged = TrainingSettings.from_config({"optim": "paged_adamw_8bit", "gpus": 1})
    if torch.cuda.is_available():  # a GPU job runs it
        assert training_arguments(paged, tmp_path, 10, logging.getLogger("test")).optim == "paged_adamw_8bit"
    else:  # a job that got no GPU stops before training, saying why
        with pytest.raises(ConfigError, match="paged_adamw_8bit runs on CUDA only and this job has no GPU"):
            training_arguments(paged, tmp_path, 10, logging.getLogger("test"))


def test_warmup_ratio_one_warms_up_over_every_step_of_a_real_training(tiny, tmp_path):
    meta = write_synthetic_dataset(tmp_path / "data", 8, num_frames=2, size=32)
    settings = {"epochs": 2, "batch_size": 4, "learning_rate": 1e-3, "warmup_ratio": 1.0, "save_steps": 100,
                "lr_scheduler_type": "cosine", "optim": "adamw_torch", "trainer_args": {"max_grad_norm": 0.5}}
    summary = train(meta, tiny, tmp_path / "out", settings)
    rates = [entry["learning_rate"] for entry in json.loads((tmp_path / "out" / "loss.json").read_text())]
    assert summary["steps"] == TrainingSettings.from_config(settings).total_steps(8) == 4
    assert summary["warmup_steps"] == 4
    # The rate each step used rises every step, from 0 towards the peak that warm-up reaches after the last.
    assert rates == pytest.approx([0.0, 2.5e-4, 5e-4, 7.5e-4])


def test_trainer_args_are_checked_against_the_installed_transformers():
    check_trainer_args({"max_grad_norm": 0.5, "adam_beta2": 0.95, "report_to": ["tensorboard"],
                        "lr_scheduler_kwargs": {"min_lr": 1e-6}, "torch_compile": False, "run_name": "x"}, WHERE)
    with pytest.raises(ConfigError, match=rf"{WHERE}\.max_grad_nrom: not a TrainingArguments key"):
        check_trainer_args({"max_grad_nrom": 1.0}, WHERE)
    with pytest.raises(ConfigError, match=rf"{WHERE}\.max_grad_norm: 'high' is not of the key's type float"):
        check_trainer_args({"max_grad_norm": "high"}, WHERE)
    with pytest.raises(ConfigError, match=rf"{WHERE}\.torch_compile: 1 is not of the key's type bool"):
        check_trainer_args({"torch_compile": 1}, WHERE)
    with pytest.raises(ConfigError, match=rf"{WHERE}\.optim_target_modules: 3 is not"):
        check_trainer_args({"optim_target_modules": 3}, WHERE)
    for owned in ("output_dir", "seed", "deepspeed", "per_device_train_batch_size", "save_strategy",
                  "dataloader_num_workers", "warmup_steps", "optim", "lr_scheduler_type"):
        with pytest.raises(ConfigError, match=rf"{WHERE}\.{owned}: vidtune sets this TrainingArguments key"):
            check_trainer_args({owned: 1}, WHERE)


def test_schedules_and_optimizers_are_transformers_names_and_8bit_needs_a_gpu():
    training = _schema()["definitions"]["training"]["properties"]
    assert set(training["lr_scheduler_type"]["enum"]) <= {kind.value for kind in SchedulerType}
    assert set(training["optim"]["enum"]) <= {kind.value for kind in OptimizerNames}
    for optimizer in ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"):
        with pytest.raises(ConfigError, match=rf"runs.r.training.optim: {optimizer} runs on CUDA only"):
            check_training({"optim": optimizer, "gpus": 0}, "runs.r.training")
        check_training({"optim": optimizer, "gpus": 1}, "runs.r.training")


def test_trainer_args_that_change_the_weights_reach_training_and_logging_ones_nothing():
    training = {"trainer_args": {"max_grad_norm": 0.5, "report_to": "wandb", "run_name": "a", "adam_beta2": 0.9}}
    given = settings_for("train", training, "runs", ANY, "training")
    assert given["trainer_args"] == {"adam_beta2": 0.9, "max_grad_norm": 0.5}
    assert "`runs.<name>.training.trainer_args`" in reach_table()


def test_a_bad_trainer_arg_fails_when_the_workflow_is_parsed(tmp_path):
    config = quick_config()
    config["runs"]["demo"]["training"]["trainer_args"] = {"max_grad_norm": 0.5, "save_only_model": True}
    result = Workflow(tmp_path, config).snakemake("-n", "train_all", check=False)
    assert result.returncode != 0
    assert "runs.demo.training.trainer_args.save_only_model: vidtune sets this TrainingArguments key" in \
        result.stdout + result.stderr
