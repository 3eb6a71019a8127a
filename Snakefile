# vidtune: raw video/image caption datasets -> canonical samples -> splits -> frames -> InternVL files
# -> training -> merged model -> predictions (base and finetuned) -> caption metrics -> report.
#
# Targets: prepare_all (data up to JSONL + meta.json), train_all (everything), evaluate_all (metrics).
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


rule prepare_all:
    default_target: True
    input:
        expand(rules.run_meta.output.meta, run=RUNS),
        expand(rules.internvl_files.output.summary, dataset=USED_DATASETS),


rule train_all:
    input:
        expand(rules.score.output.metrics, run=RUNS),
        expand(rules.merge.output.model, run=RUNS),
        rules.runs_table.output.table,
        expand(rules.report_run.output, run=RUNS),
        rules.report_overview.output,


rule export:
    input:
        expand(rules.internvideo_export.output.meta, dataset=USED_DATASETS),


rule evaluate_all:
    input:
        expand(rules.score.output.metrics, run=RUNS),
        rules.runs_table.output.table,
