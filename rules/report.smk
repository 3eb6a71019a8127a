# Report artefacts per run, for `snakemake --report report.html`: written by rule report_artifacts.
