# Stage 4: tables and figures. Each group is a notebook in notebooks/, executed with papermill on the
# results above; the notebook writes the artefacts, its executed copy goes to notebooks/executed/<preset>/
# (committed: a reviewer opens it on the code host) and an HTML rendering to results/<preset>/notebooks/,
# so every number can be traced to the code and rows that made it.


rule tables:
    """Tables 1-5 and the paired comparison with IFE."""
    input:
        notebook=notebook("tables"),
        rows=f"{RESULTS}/results.csv",
        runs=f"{RESULTS}/runs.csv",
    output:
        REPORT_OUTPUTS["tables"],
        **executed("tables"),
    params:
        code=notebook_code("tables"),
        parameters={"results": RESULTS, "tables_dir": TABLES_DIR, "base_runs": list(config["runs"]),
                    "label": TABLE_LABEL},
    log:
        f"logs/{PRESET}/report/tables.log",
    localrule: True
    conda:
        "../envs/diffinv.yaml"
    script:
        "scripts/run_notebook.py"


rule error_figure:
    """Figure 2: histograms of the fixed-point estimation error's sample mean and variance."""
    input:
        notebook=notebook("error_statistics"),
        stats=f"{RESULTS}/error_stats.csv",
    output:
        REPORT_OUTPUTS["error_statistics"],
        **executed("error_statistics"),
    params:
        code=notebook_code("error_statistics"),
        parameters={"results": RESULTS, "figures_dir": FIGURES_DIR, "runs": config["error_stats"]["runs"],
                    "label": TABLE_LABEL},
    log:
        f"logs/{PRESET}/report/error_statistics.log",
    localrule: True
    conda:
        "../envs/diffinv.yaml"
    script:
        "scripts/run_notebook.py"


rule qualitative_figures:
    """Figures 3 and 4: reconstructions beside the original, and the fixed-point baselines over K."""
    input:
        notebook=notebook("qualitative"),
        rows=f"{RESULTS}/results.csv",
        runs=f"{RESULTS}/runs.csv",
        manifests=[preset_manifest(dataset) for dataset in DATASETS],
        images=[images_dir(dataset) for dataset in DATASETS],
        recon=shown_recon,
    output:
        REPORT_OUTPUTS["qualitative"],
        **executed("qualitative"),
    params:
        code=notebook_code("qualitative"),
        parameters={"results": RESULTS, "figures_dir": FIGURES_DIR, "datasets": list(DATASETS), "resolution": MODEL["resolution"], "images": REPORT["images"],
                    "qualitative_runs": REPORT["qualitative_runs"], "iteration_methods": REPORT["iteration_methods"],
                    "label": TABLE_LABEL},
    log:
        f"logs/{PRESET}/report/qualitative.log",
    localrule: True
    conda:
        "../envs/diffinv.yaml"
    script:
        "scripts/run_notebook.py"


rule efficiency_figure:
    """Quality against NFE and seconds; the GPU-hours of the paper preset (or of this GPU preset)."""
    input:
        notebook=notebook("efficiency"),
        rows=f"{RESULTS}/results.csv",
        runs=f"{RESULTS}/runs.csv",
        throughput=repository_path(PRICED["report"]["throughput"]),
    output:
        REPORT_OUTPUTS["efficiency"],
        **executed("efficiency"),
    params:
        code=notebook_code("efficiency"),
        parameters={"results": RESULTS, "figures_dir": FIGURES_DIR, "tables_dir": TABLES_DIR,
                    "priced": PRICED, "throughput": repository_path(PRICED["report"]["throughput"]),
                    "label": TABLE_LABEL},
    log:
        f"logs/{PRESET}/report/efficiency.log",
    localrule: True
    conda:
        "../envs/diffinv.yaml"
    script:
        "scripts/run_notebook.py"


if TRAINED:

    rule model_quality:
        """The trained network's loss curve, and its noise-prediction MSE on the evaluation images at several
        noise levels against the exact mixture's posterior mean and trivial predictors."""
        input:
            model=model_weights(),
            losses=rules.train_model.output.losses,
            reference=rules.fit_reference.output[0],
            manifests=[preset_manifest(dataset) for dataset in DATASETS],
            images=[images_dir(dataset) for dataset in DATASETS],
        output:
            **MODEL_REPORT,
        params:
            datasets=list(DATASETS),
            timesteps=[50, 200, 500, 800, 950],
            draws=4,
            seed=0,
            label=TABLE_LABEL,
            code=code("rules/scripts/model_quality.py"),
        log:
            f"logs/{PRESET}/report/model_quality.log",
        threads: 1
        conda:
            "../envs/diffinv.yaml"
        script:
            "scripts/model_quality.py"
