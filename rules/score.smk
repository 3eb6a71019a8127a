# Caption metrics (pycocoevalcap: PTB tokenizer, BLEU-1..4, METEOR, ROUGE-L, CIDEr) and, for JSON targets,
# structured-field scores, for base and finetuned on exactly the same samples, with paired bootstrap
# intervals (vidtune.bootstrap); then the runs compared pairwise on shared test sets.


rule score:
    input:
        base=predictions_of("base"),
        finetuned=predictions_of("finetuned"),
        tables=lambda wildcards: expand(rules.split.output.table, dataset=run_datasets(wildcards)),
    output:
        metrics=f"{RESULTS}/runs/{{run}}/metrics.json",
        per_sample=f"{RESULTS}/runs/{{run}}/per_sample.jsonl",
    params:
        bootstrap=settings_for("score", config["bootstrap"], "bootstrap"),
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


rule compare_runs:
    input:
        per_sample=expand(rules.score.output.per_sample, run=RUNS),
    output:
        comparison=f"{RESULTS}/runs/comparison.json",
    params:
        runs=RUNS,
        bootstrap=settings_for("compare_runs", config["bootstrap"], "bootstrap"),
    log:
        f"{RESULTS}/logs/compare_runs.log",
    message:
        "Comparing the finetuned models of every two runs on the same test set"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/vidtune.yaml"
    script:
        "../workflow/scripts/compare_runs.py"


rule runs_table:
    input:
        metrics=expand(rules.score.output.metrics, run=RUNS),
        comparison=rules.compare_runs.output.comparison,
        train=expand(rules.train.output.summary, run=RUNS),
    output:
        table=f"{RESULTS}/runs/metrics_table.md",
    params:
        runs=RUNS,
        swept=[SWEPT[run] for run in RUNS],
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
