# Finetune the base model on a run's training mix (LoRA, QLoRA or full; DeepSpeed and several GPUs when
# configured). Checkpoints live outside the declared outputs, in results/runs/<run>/train/checkpoints,
# so a killed job resumes from the last complete one instead of starting over.
# With training.nodes above 1 the job is one SLURM allocation of that many nodes with training.gpus GPUs
# each (per-node gres); the script itself starts one torchrun per node with srun (the `mpi` resource keeps
# the executor from wrapping the script in an srun of its own). docs/cluster.md, "Multi-node training".


rule train:
    input:
        meta=rules.run_meta.output.meta,
        train=dataset_split_file("train"),
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
        out_dir=f"{RESULTS}/runs/{{run}}/train",
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
        mem_mb=lambda wildcards, attempt: 16000 * attempt,
        runtime=lambda wildcards: config["runs"][wildcards.run]["training"]["runtime_min"],
        # How often checkpoints are written and how many are kept: job settings, not the result.
        save_steps=lambda wildcards: config["runs"][wildcards.run]["training"]["save_steps"],
        save_total_limit=lambda wildcards: config["runs"][wildcards.run]["training"]["save_total_limit"],
    conda:
        "../envs/vidtune.yaml"
    script:
        "../workflow/scripts/train.py"
