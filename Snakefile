# vidtune: raw video/image caption datasets -> canonical samples -> splits -> frames -> InternVL files
# -> training -> merged model -> predictions (base and finetuned) -> caption metrics -> report.
#
# Targets: prepare_all (data up to JSONL + meta.json), train_all (everything), evaluate_all (metrics). A config
# with datasets only (no models or runs) prepares its datasets; nothing that needs a model or a run is planned.
# The rules are in pipeline order under rules/; their logic lives in the vidtune package (src/vidtune).

from snakemake.utils import min_version

min_version("9.0")


# The embedded default, unless the user names their own config (`--configfile my.yaml`): then only theirs is
# read, so the demo's dataset and run are not merged into it. `--config key=value` still edits the default.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/ingest.smk"
include: "rules/split.smk"
include: "rules/frames.smk"
include: "rules/internvl.smk"
include: "rules/base_model.smk"
include: "rules/train.smk"
include: "rules/merge.smk"
include: "rules/predict.smk"
include: "rules/score.smk"
include: "rules/report.smk"
include: "rules/export.smk"


# The targets name the main output of every step, not only the last ones: Snakemake makes a missing
# intermediate file again only when a target or a stale step needs it, so a step that failed (training at
# a SLURM time limit, say) would otherwise be skipped on the next run, leaving the outputs after it as the
# old settings made them.
DATA_OUTPUTS = [
    expand(rules.ingest.output.samples, dataset=USED_DATASETS),
    expand(rules.split.output.table, dataset=USED_DATASETS),
    [expand(rules.extract_frames.output.index, dataset=d, shard=shard_ids(d)) for d in USED_DATASETS],
    expand(rules.internvl_files.output.summary, dataset=USED_DATASETS),
    expand(rules.run_meta.output.meta, run=RUNS),
    expand(rules.training_meta.output.meta, run=RUNS),
]
MODEL_OUTPUTS = [
    expand(rules.train.output.summary, run=RUNS),
    expand(rules.merge.output.model, run=RUNS),
    [run_predictions(run, which) for run in RUNS for which in ("base", "finetuned")],
]
# What compares runs; a config without runs (datasets only) plans none of it.
COMPARISON_OUTPUTS = [
    expand(rules.score.output.metrics, run=RUNS),
    [rules.compare_runs.output.comparison, rules.runs_table.output.table] if RUNS else [],
]


rule prepare_all:
    default_target: True
    input:
        DATA_OUTPUTS,


rule train_all:
    input:
        DATA_OUTPUTS,
        MODEL_OUTPUTS,
        COMPARISON_OUTPUTS,
        expand(rules.report_run.output, run=RUNS),
        rules.report_overview.output if RUNS else [],


rule export:
    input:
        expand(rules.internvideo_export.output.meta, dataset=USED_DATASETS),


rule evaluate_all:
    input:
        DATA_OUTPUTS,
        MODEL_OUTPUTS,
        COMPARISON_OUTPUTS,
