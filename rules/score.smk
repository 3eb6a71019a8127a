# Caption metrics (pycocoevalcap: PTB tokenizer, BLEU-1..4, METEOR, ROUGE-L, CIDEr) and, for JSON targets,
# structured-field scores, for base and finetuned on exactly the same samples.


rule score:
    input:
        base=predictions_of("base"),
        finetuned=predictions_of("finetuned"),
        tables=lambda wildcards: expand(rules.split.output.table, dataset=run_datasets(wildcards)),
    output:
        metrics=f"{RESULTS}/runs/{{run}}/metrics.json",
        per_sample=f"{RESULTS}/runs/{{run}}/per_sample.jsonl",
    log:
        f"{RESULTS}/logs/score/{{run}}.log",
    message:
        "Scoring run {wildcards.run}"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/vidtune.yaml"
    script:
        "../workflow/scripts/score.py"


rule runs_table:
    input:
        metrics=expand(rules.score.output.metrics, run=RUNS),
    output:
        table=f"{RESULTS}/runs/metrics_table.md",
    params:
        runs=RUNS,
    log:
        f"{RESULTS}/logs/runs_table.log",
    message:
        "Tabulating the metrics of every run"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/vidtune.yaml"
    script:
        "../workflow/scripts/runs_table.py"
