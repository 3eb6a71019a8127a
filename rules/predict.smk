# Predict the evaluation split with the base model and with the merged finetuned model: the same frames,
# prompt, chat template, tiling (each dataset's own) and generation settings for both. Each prediction runs
# as evaluation.shards jobs (each on its own GPU; on SLURM one job per shard), joined into one file sorted by
# id that is the same for any shard count. Base predictions depend only on the base model, the test records
# and the prediction settings, so runs that share those share one base prediction
# (results/predictions/base/<model>/<key>).


rule predict_base:
    input:
        model=lambda wildcards: model_folder(wildcards.model),
        records=base_evaluation_files,
    output:
        predictions=f"{RESULTS}/predictions/base/{{model}}/{{evaluation}}/{{shard}}.jsonl",
    params:
        evaluation=lambda wildcards: base_evaluation(wildcards)["settings"],
        datasets=base_evaluation_datasets_settings("predict_base"),
        model=model_settings("predict_base"),
    log:
        f"{RESULTS}/logs/predict/base/{{model}}/{{evaluation}}/{{shard}}.log",
    message:
        "Predicting shard {wildcards.shard} of {wildcards.evaluation} with the base model {wildcards.model}"
    threads: lambda wildcards: 1 if base_evaluation(wildcards)["gpus"] == 0 else 4
    resources:
        gpu=lambda wildcards: min(1, base_evaluation(wildcards)["gpus"]),
        mem_mb=model_memory("predict", lambda wildcards: wildcards.model),
        runtime=lambda wildcards, attempt: 120 * attempt,
    conda:
        "../envs/vidtune.yaml"
    script:
        "../workflow/scripts/predict.py"


rule predict_finetuned:
    input:
        model=rules.merge.output.model,
        # Not read: Snakemake plans the jobs after a checkpoint again once it has run, but keeps its first plan
        # for a job that only follows one; with the checked records as input this job is planned again after
        # check_training_data, so a check that accepts the same records as before leaves it as it was.
        checked=checked_training_records,
        records=evaluation_files,
    output:
        predictions=f"{RESULTS}/runs/{{run}}/predictions/finetuned/{{shard}}.jsonl",
    params:
        evaluation=run_settings("predict_finetuned", "evaluation"),
        datasets=run_datasets_settings("predict_finetuned"),
        model=model_settings("predict_finetuned"),
    log:
        f"{RESULTS}/logs/predict/finetuned/{{run}}/{{shard}}.log",
    message:
        "Predicting shard {wildcards.shard} of run {wildcards.run} with the finetuned model"
    threads: lambda wildcards: 1 if config["runs"][wildcards.run]["evaluation"]["gpus"] == 0 else 4
    resources:
        gpu=lambda wildcards: min(1, config["runs"][wildcards.run]["evaluation"]["gpus"]),
        mem_mb=model_memory("predict"),
        runtime=lambda wildcards, attempt: 120 * attempt,
    conda:
        "../envs/vidtune.yaml"
    script:
        "../workflow/scripts/predict.py"


rule join_predictions:
    input:
        shards=prediction_shard_files,
    output:
        predictions=f"{RESULTS}/{{predictions}}.jsonl",
    wildcard_constraints:
        predictions=r"predictions/base/[^/]+/[^/]+|runs/[^/]+/predictions/finetuned",
    log:
        f"{RESULTS}/logs/join_predictions/{{predictions}}.log",
    message:
        "Joining the prediction shards of {wildcards.predictions}"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/vidtune.yaml"
    script:
        "../workflow/scripts/join_predictions.py"
