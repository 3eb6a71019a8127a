# Raw annotations of one dataset -> the canonical sample table (src/vidtune/samples.py documents it).


rule ingest:
    input:
        unpack(ingest_inputs),
    output:
        samples=f"{RESULTS}/datasets/{{dataset}}/samples.parquet",
        rejects=f"{RESULTS}/datasets/{{dataset}}/ingest_rejects.jsonl",
        summary=f"{RESULTS}/datasets/{{dataset}}/ingest_summary.json",
    params:
        dataset=dataset_settings("ingest"),
    log:
        f"{RESULTS}/logs/ingest/{{dataset}}.log",
    message:
        "Ingesting dataset {wildcards.dataset}"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/vidtune.yaml"
    script:
        "../workflow/scripts/ingest.py"
