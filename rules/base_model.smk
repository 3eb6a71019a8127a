# Base models: a checkpoint folder given by path is used where it is, or, in InternVL's original layout
# (InternVL2/2.5/3/3.5 as downloaded), converted to transformers' native InternVL once; a `tiny` model of a
# family or a named real `architecture` (e.g. InternVL3-1B/2B/8B, optionally with fewer layers) is built here
# with random weights by its family (docs/families.md).


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
        "Building the random-weight model {wildcards.model}"
    threads: 1
    resources:
        mem_mb=model_memory("build_model", lambda wildcards: wildcards.model),
        runtime=30,
    conda:
        "../envs/vidtune.yaml"
    script:
        "../workflow/scripts/build_model.py"


rule convert_model:
    wildcard_constraints:
        model="|".join(re.escape(name) for name in ORIGINAL_LAYOUT_MODELS) or "(?!)",
    input:
        # The folder's bytes decide a rerun (params below), not its modification times.
        source=lambda wildcards: ancient(config["models"][wildcards.model]["path"]),
    output:
        model=directory(f"{RESULTS}/models/{{model}}"),
    params:
        model=model_settings("convert_model"),
        contents=model_source_contents,
    log:
        f"{RESULTS}/logs/convert_model/{{model}}.log",
    message:
        "Converting the original-layout InternVL checkpoint {wildcards.model} to transformers' native InternVL"
    threads: 1
    resources:
        # Tensors are streamed one shard at a time: memory follows the largest shard, not the model.
        mem_mb=streaming_memory(lambda wildcards: config["models"][wildcards.model]["path"]),
        runtime=60,
    conda:
        "../envs/vidtune.yaml"
    script:
        "../workflow/scripts/convert_model.py"
