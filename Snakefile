# The replication workflow of "An Iteration-Free Fixed-Point Estimator for Diffusion Inversion".
#   snakemake --cores 1                                  # paper preset (config/config.yaml)
#   snakemake --cores 2 --configfile config/demo.yaml    # offline demo preset
# Stages: acquire data and weights -> invert + reconstruct per (dataset, run, shard) -> collect
# per-image rows -> error statistics -> tables and figures, each group made by an executed notebook
# (notebooks/). See README ("Workflow").
from snakemake.utils import min_version

min_version("9.0")


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/acquire.smk"
include: "rules/invert.smk"
include: "rules/stats.smk"
include: "rules/report.smk"


onstart:
    # a real run only: a CUDA device if a job runs the model on one, and the host of every download planned
    from diffinv.workflow.preflight import check, downloads

    planned = {job.rule.name for job in workflow.dag.needrun_jobs()}
    check(config, cuda=MODEL["device"].startswith("cuda") and bool(planned & set(MODEL_RULES)),
          downloads=[(what, url) for what, rule, url in downloads(config) if rule in planned])


rule all:
    input:
        f"{RESULTS}/results.csv",
        f"{RESULTS}/summary.csv",
        f"{RESULTS}/error_stats.csv",
        rules.tables.output,
        rules.error_figure.output,
        rules.qualitative_figures.output,
        rules.efficiency_figure.output,
        list(MODEL_REPORT.values()),
    default_target: True
