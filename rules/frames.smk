# Frame extraction, sharded. A manifest per shard lists its media items (file, content signature, clip
# window, frame settings) and no captions; a shard job extracts only the items missing from the frame
# cache (results/frames/cache/<key>/, keyed by what determines the frames).
#
# frame_manifest is a checkpoint: when it rewrites a manifest with the same bytes (a caption edit), the
# DAG is re-evaluated and the shard job, whose input checksum is unchanged, does not run at all.


checkpoint frame_manifest:
    input:
        samples=rules.ingest.output.samples,
    output:
        manifest=f"{RESULTS}/datasets/{{dataset}}/frames/manifests/shard_{{shard}}.json",
    params:
        dataset=dataset_settings("frame_manifest"),
    log:
        f"{RESULTS}/logs/frame_manifest/{{dataset}}/{{shard}}.log",
    message:
        "Listing the media of dataset {wildcards.dataset}, shard {wildcards.shard}"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/vidtune.yaml"
    script:
        "../workflow/scripts/frame_manifest.py"


rule extract_frames:
    input:
        manifest=shard_manifest,
    output:
        index=f"{RESULTS}/datasets/{{dataset}}/frames/index/shard_{{shard}}.json",
    params:
        cache=f"{RESULTS}/frames/cache",
    log:
        f"{RESULTS}/logs/extract_frames/{{dataset}}/{{shard}}.log",
    message:
        "Extracting frames for dataset {wildcards.dataset}, shard {wildcards.shard}"
    threads: 4
    resources:
        mem_mb=lambda wildcards, threads, attempt: 1500 * threads * attempt,
        runtime=lambda wildcards, attempt: 120 * attempt,
        # A video whose decoding takes longer is rejected (whole seconds): a limit, so raising it reruns
        # nothing; `snakemake -R extract_frames` retries the videos that timed out, and only those.
        decode_timeout_s=lambda wildcards: math.ceil(config["datasets"][wildcards.dataset]["frames"]["timeout_s"]),
    conda:
        "../envs/vidtune.yaml"
    script:
        "../workflow/scripts/extract_frames.py"


# On request only (`snakemake clean_frames`): no output, so it runs whenever it is asked for, and it reads the
# indexes as they are rather than making them. Refuses while another run may be extracting frames.
rule clean_frames:
    params:
        results=RESULTS,
    log:
        f"{RESULTS}/logs/clean_frames.log",
    message:
        "Removing frame cache folders that no frame index refers to"
    localrule: True
    threads: 1
    conda:
        "../envs/vidtune.yaml"
    script:
        "../workflow/scripts/clean_frames.py"
