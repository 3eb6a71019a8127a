# Predict the evaluation split with the base model and with the merged finetuned model: the same frames,
# prompt, chat template and generation settings for both.


rule predict:
    input:
        model=predict_model,
        records=evaluation_files,
    output:
        predictions=f"{RESULTS}/runs/{{run}}/predictions/{{which}}.jsonl",
    params:
        evaluation=run_settings("predict", "evaluation"),
        model=model_settings("predict"),
    log:
        f"{RESULTS}/logs/predict/{{run}}/{{which}}.log",
    message:
        "Predicting run {wildcards.run} with the {wildcards.which} model"
    threads: run_threads("evaluation")
    resources:
        gpu=run_gpus("evaluation"),
        mem_mb=lambda wildcards, attempt: 16000 * attempt,
        runtime=lambda wildcards, attempt: 120 * attempt,
    conda:
        "../envs/vidtune.yaml"
    script:
        "../workflow/scripts/predict.py"
