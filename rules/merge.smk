# Merge the trained adapter into the base model and check the merged model against the adapter model.


rule merge:
    input:
        base=run_model_folder,
        trained=rules.train.output.final,
        check=checked_training_records,  # a few records the model takes, for the logit check
    output:
        model=directory(f"{RESULTS}/runs/{{run}}/merged"),  # holds merge_check.json, the logit check
    params:
        model=model_settings("merge"),
    log:
        f"{RESULTS}/logs/merge/{{run}}.log",
    message:
        "Merging the adapter of run {wildcards.run} into its base model"
    threads: 1
    resources:
        mem_mb=model_memory("merge"),
        runtime=60,
    conda:
        "../envs/vidtune.yaml"
    script:
        "../workflow/scripts/merge.py"
