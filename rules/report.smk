# Report artefacts for `snakemake --report report.html`: per run the metrics table and chart, the
# configuration and a gallery of test samples (the loss curve is flagged on the train rule); overall the
# data summary and the runs compared (best run per metric, every run with intervals and training cost, each
# metric against each swept setting). train_all makes them, so the report needs no extra run.


rule report_run:
    input:
        metrics=rules.score.output.metrics,
        per_sample=rules.score.output.per_sample,
        records=evaluation_files,
    output:
        metrics_table=report(
            f"{RESULTS}/runs/{{run}}/report/metrics.html",
            caption="../workflow/report/metrics.rst",
            category="Run {run}",
            subcategory="Metrics",
            labels={"run": "{run}", "figure": "metrics table"},
        ),
        metrics_chart=report(
            f"{RESULTS}/runs/{{run}}/report/metrics.png",
            caption="../workflow/report/metrics_chart.rst",
            category="Run {run}",
            subcategory="Metrics",
            labels={"run": "{run}", "figure": "metrics chart"},
        ),
        config=report(
            f"{RESULTS}/runs/{{run}}/report/config.html",
            caption="../workflow/report/config.rst",
            category="Run {run}",
            subcategory="Training",
            labels={"run": "{run}", "figure": "configuration"},
        ),
        gallery=report(
            f"{RESULTS}/runs/{{run}}/report/gallery.html",
            caption="../workflow/report/gallery.rst",
            category="Run {run}",
            subcategory="Samples",
            labels={"run": "{run}", "figure": "gallery"},
        ),
    params:
        run=run_settings("report_run"),
        model=model_settings("report_run"),
    log:
        f"{RESULTS}/logs/report_run/{{run}}.log",
    message:
        "Making the report pages of run {wildcards.run}"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    conda:
        "../envs/vidtune.yaml"
    script:
        "../workflow/scripts/report_run.py"


rule report_overview:
    input:
        summaries=expand(rules.internvl_files.output.summary, dataset=USED_DATASETS),
        ingest=expand(rules.ingest.output.summary, dataset=USED_DATASETS),
        metrics=expand(rules.score.output.metrics, run=RUNS),
        train=expand(rules.train.output.summary, run=RUNS),
        checks=[expand(rules.check_training_data.output.summary, run=run, dataset=run_datasets_of(run)) for run in RUNS],
        comparison=rules.compare_runs.output.comparison,
    output:
        data=report(
            f"{RESULTS}/report/data_summary.html",
            caption="../workflow/report/data_summary.rst",
            category="Overview",
            subcategory="Data",
        ),
        runs=report(
            f"{RESULTS}/report/runs.html",
            caption="../workflow/report/runs_table.rst",
            category="Overview",
            subcategory="Runs",
        ),
    params:
        datasets=USED_DATASETS,
        runs=RUNS,
        checked=[run for run in RUNS for _ in run_datasets_of(run)],  # the run of each checks input
        swept=[SWEPT[run] for run in RUNS],
    log:
        f"{RESULTS}/logs/report_overview.log",
    message:
        "Making the report overview"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/vidtune.yaml"
    script:
        "../workflow/scripts/report_overview.py"
