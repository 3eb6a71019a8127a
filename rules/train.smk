# Finetune the base model on a run's training mix (LoRA, QLoRA or full; DeepSpeed and several GPUs when
# configured). Checkpoints live outside the declared outputs, in results/runs/<run>/train/checkpoints,
# so a killed job resumes from the last complete one instead of starting over.


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
        gpu=run_gpus("training"),
        mem_mb=lambda wildcards, attempt: 16000 * attempt,
        runtime=lambda wildcards: config["runs"][wildcards.run]["training"]["runtime_min"],
        # How often checkpoints are written and how many are kept: job settings, not the result.
        save_steps=lambda wildcards: config["runs"][wildcards.run]["training"]["save_steps"],
        save_total_limit=lambda wildcards: config["runs"][wildcards.run]["training"]["save_total_limit"],
    conda:
        "../envs/vidtune.yaml"
    script:
        "../workflow/scripts/train.py"
