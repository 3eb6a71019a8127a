# check_training_data: per run and dataset, the training records the run's model can take (the rest go to
# rejects.jsonl with a reason). A checkpoint: a check that accepts the same records as before (another
# max_seq_length that changes nothing) makes nothing after it stale. training_meta: the run's meta.json of
# the checked records, InternVL files that training reads without checking again.
#
# train: finetune the base model on a run's checked training mix (LoRA, QLoRA or full; DeepSpeed and several GPUs when
# configured). Checkpoints live outside the declared outputs, in results/runs/<run>/train/checkpoints,
# so a killed job resumes from the last complete one instead of starting over.
# With training.nodes above 1 the job is one SLURM allocation of that many nodes with training.gpus GPUs
# each (per-node gres); the script itself starts one torchrun per node with srun (the `mpi` resource keeps
# the executor from wrapping the script in an srun of its own). docs/cluster.md, "Multi-node training".


checkpoint check_training_data:
    input:
        meta=rules.run_meta.output.meta,  # the dataset's entry: its root and max_dynamic_patch
        train=lambda wildcards: split_files([wildcards.dataset], "train")[0],
        model=run_model_folder,
    output:
        records=f"{RESULTS}/runs/{{run}}/training_data/{{dataset}}/train.jsonl",
        lengths=f"{RESULTS}/runs/{{run}}/training_data/{{dataset}}/lengths.json",  # tokens per record
        rejects=f"{RESULTS}/runs/{{run}}/training_data/{{dataset}}/rejects.jsonl",
        summary=f"{RESULTS}/runs/{{run}}/training_data/{{dataset}}/summary.json",
    params:
        training=run_settings("check_training_data", "training"),
    log:
        f"{RESULTS}/logs/check_training_data/{{run}}/{{dataset}}.log",
    message:
        "Checking the training records of dataset {wildcards.dataset} for run {wildcards.run}"
    threads: 1
    resources:
        mem_mb=model_memory("check_training_data"),
        runtime=60,
    conda:
        "../envs/vidtune.yaml"
    script:
        "../workflow/scripts/check_training_data.py"


rule training_meta:
    input:
        meta=rules.run_meta.output.meta,
        records=checked_training_records,
    output:
        meta=f"{RESULTS}/runs/{{run}}/training_data/meta.json",
    params:
        datasets=run_datasets,
    log:
        f"{RESULTS}/logs/training_meta/{{run}}.log",
    message:
        "Writing the meta.json of run {wildcards.run}'s checked training records"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/vidtune.yaml"
    script:
        "../workflow/scripts/training_meta.py"


rule train:
    input:
        meta=rules.training_meta.output.meta,
        records=checked_training_records,
        model=run_model_folder,
    output:
        final=directory(f"{RESULTS}/runs/{{run}}/train/final"),
        summary=f"{RESULTS}/runs/{{run}}/train/train_summary.json",
        loss=f"{RESULTS}/runs/{{run}}/train/loss.json",
        loss_plot=report(
            f"{RESULTS}/runs/{{run}}/train/loss.png",
            caption="../workflow/report/loss_curve.rst",
            category="Run {run}",
            subcategory="Training",
            labels={"run": "{run}", "figure": "loss curve"},
        ),
    params:
        training=run_settings("train", "training"),
        model=model_settings("train"),
        out_dir=lambda wildcards, output: Path(output.summary).parent,
    log:
        f"{RESULTS}/logs/train/{{run}}.log",
    message:
        "Training run {wildcards.run} ({params.training[method]})"
    threads: run_threads("training")
    resources:
        # Whole-job GPUs on one node; several nodes ask per node instead (gres below).
        gpu=lambda wildcards: (
            0 if config["runs"][wildcards.run]["training"]["nodes"] > 1 else run_gpus("training")(wildcards)
        ),
        nodes=train_multi_node(lambda training: training["nodes"]),
        gres=train_multi_node(lambda training: f"gpu:{training['gpus']}" if training["gpus"] else None),
        tasks=train_multi_node(lambda training: training["nodes"]),
        tasks_per_gpu=train_multi_node(lambda training: 0),
        mpi=train_multi_node(lambda training: "srun"),
        mem_mb=train_memory,
        # Minutes from the run's steps (training.runtime_min: auto), at most the site block's runtime_limit.
        runtime=train_runtime(),
        runtime_needed=train_runtime(needed_only=True),
        # How often checkpoints are written and how many are kept: job settings, not the result.
        save_steps=lambda wildcards: config["runs"][wildcards.run]["training"]["save_steps"],
        save_total_limit=lambda wildcards: config["runs"][wildcards.run]["training"]["save_total_limit"],
        # Loading processes per training process: the same batches in the same order for any count.
        data_workers=lambda wildcards: config["runs"][wildcards.run]["training"]["data_workers"],
    conda:
        "../envs/vidtune.yaml"
    script:
        "../workflow/scripts/train.py"
