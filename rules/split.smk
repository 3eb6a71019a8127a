# Assign each sample to train/val/test from a hash of (seed, group key); official splits win.


rule split:
    input:
        samples=rules.ingest.output.samples,
    output:
        table=f"{RESULTS}/datasets/{{dataset}}/split.parquet",
    params:
        dataset=dataset_settings("split"),
    log:
        f"{RESULTS}/logs/split/{{dataset}}.log",
    message:
        "Splitting dataset {wildcards.dataset}"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/vidtune.yaml"
    script:
        "../workflow/scripts/split.py"
