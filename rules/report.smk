# Stage 4: the paper's tables from the per-image rows, as CSV, Markdown and LaTeX.
# (Figures and notebooks: issue 5.)


rule tables:
    input:
        rows=f"{RESULTS}/results.csv",
        runs=f"{RESULTS}/runs.csv",
    output:
        [f"tables/{config['preset']}/{name}.{ext}" for name in TABLES for ext in ("csv", "md", "tex")],
    params:
        base_runs=list(config["runs"]),
        label=TABLE_LABEL,
    log:
        f"logs/{config['preset']}/tables.log",
    localrule: True
    conda:
        "../envs/diffinv.yaml"
    script:
        "scripts/tables.py"
