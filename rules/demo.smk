# The embedded demo dataset: synthetic clips of moving coloured shapes, rendered with ffmpeg.


rule make_demo_dataset:
    output:
        annotations=f"{RESULTS}/demo/data/annotations.jsonl",
    params:
        demo=settings_for("make_demo_dataset", config["demo"], "demo"),
    log:
        f"{RESULTS}/logs/make_demo_dataset.log",
    message:
        "Rendering {params.demo[num_videos]} synthetic demo clips"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    conda:
        "../envs/vidtune.yaml"
    script:
        "../workflow/scripts/make_demo_dataset.py"
