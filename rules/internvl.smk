# Training files in InternVL's own format: JSONL per split for each dataset, and a meta.json per run
# that mixes the run's datasets with their repeat_time.
#
# internvl_files is a checkpoint so that a split file rewritten with the same bytes (a caption edit in
# train leaves test.jsonl as it was) does not make the base model's predictions stale.


checkpoint internvl_files:
    input:
        table=rules.split.output.table,
        ingest_rejects=rules.ingest.output.rejects,
        indexes=lambda wildcards: expand(
            rules.extract_frames.output.index, dataset=wildcards.dataset, shard=shard_ids(wildcards.dataset)
        ),
    output:
        train=f"{RESULTS}/datasets/{{dataset}}/internvl/train.jsonl",
        val=f"{RESULTS}/datasets/{{dataset}}/internvl/val.jsonl",
        test=f"{RESULTS}/datasets/{{dataset}}/internvl/test.jsonl",
        rejects=f"{RESULTS}/datasets/{{dataset}}/internvl/rejects.jsonl",
        summary=f"{RESULTS}/datasets/{{dataset}}/internvl/summary.json",
    params:
        dataset=dataset_settings("internvl_files"),
    log:
        f"{RESULTS}/logs/internvl_files/{{dataset}}.log",
    message:
        "Writing InternVL JSONL files for dataset {wildcards.dataset}"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/vidtune.yaml"
    script:
        "../workflow/scripts/internvl_files.py"


rule run_meta:
    input:
        train=dataset_split_file("train"),
    output:
        meta=f"{RESULTS}/runs/{{run}}/meta.json",
    params:
        datasets=run_datasets_settings("run_meta"),
    log:
        f"{RESULTS}/logs/run_meta/{{run}}.log",
    message:
        "Writing the training meta.json of run {wildcards.run}"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/vidtune.yaml"
    script:
        "../workflow/scripts/run_meta.py"
