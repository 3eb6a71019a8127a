# Base models: a checkpoint folder given by path is used where it is; a `tiny` model is built here with
# random weights (the real InternVL architecture with a small Qwen2 text model).


rule build_tiny_model:
    wildcard_constraints:
        # Only the models the config builds: a checkpoint folder that happens to live under results/models
        # is used as it is.
        model="|".join(re.escape(name) for name, model in config["models"].items() if "tiny" in model) or "(?!)",
    output:
        model=directory(f"{RESULTS}/models/{{model}}"),
    params:
        model=model_settings("build_tiny_model"),
    log:
        f"{RESULTS}/logs/build_tiny_model/{{model}}.log",
    message:
        "Building the tiny InternVL model {wildcards.model}"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/vidtune.yaml"
    script:
        "../workflow/scripts/build_tiny_model.py"
