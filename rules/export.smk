# Optional exports for other trainers: InternVideo2.5's xtuner format (target `export`). InternVL's own
# trainer reads the JSONL files and meta.json that the main pipeline writes already.


rule internvideo_export:
    input:
        table=rules.split.output.table,
        indexes=lambda wildcards: expand(
            rules.extract_frames.output.index, dataset=wildcards.dataset, shard=shard_ids(wildcards.dataset)
        ),
    output:
        meta=f"{RESULTS}/datasets/{{dataset}}/internvideo/diy_ft_data.json",
        train=f"{RESULTS}/datasets/{{dataset}}/internvideo/train.jsonl",
        val=f"{RESULTS}/datasets/{{dataset}}/internvideo/val.jsonl",
        test=f"{RESULTS}/datasets/{{dataset}}/internvideo/test.jsonl",
        summary=f"{RESULTS}/datasets/{{dataset}}/internvideo/summary.json",
    params:
        dataset=dataset_settings("internvideo_export"),
    log:
        f"{RESULTS}/logs/internvideo_export/{{dataset}}.log",
    message:
        "Writing InternVideo2.5 (xtuner) files for dataset {wildcards.dataset}"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/vidtune.yaml"
    script:
        "../workflow/scripts/internvideo_export.py"
