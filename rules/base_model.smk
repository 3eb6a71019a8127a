# Base models: a checkpoint folder given by path is used where it is; a `tiny` model or a named real
# `architecture` (InternVL3-1B/2B/8B, optionally with fewer layers) is built here with random weights.


rule build_model:
    wildcard_constraints:
        # Only the models the config builds: a checkpoint folder that happens to live under results/models
        # is used as it is.
        model="|".join(
            re.escape(name) for name, model in config["models"].items() if "tiny" in model or "architecture" in model
        )
        or "(?!)",
    output:
        model=directory(f"{RESULTS}/models/{{model}}"),
    params:
        model=model_settings("build_model"),
    log:
        f"{RESULTS}/logs/build_model/{{model}}.log",
    message:
        "Building the random-weight InternVL model {wildcards.model}"
    threads: 1
    resources:
        mem_mb=model_memory("build_model", lambda wildcards: wildcards.model),
        runtime=30,
    conda:
        "../envs/vidtune.yaml"
    script:
        "../workflow/scripts/build_model.py"
