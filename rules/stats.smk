# Stage 3: the fixed-point estimation error of IFE, IFE without error approximation and DDIM
# (the paper's Figure 2 quantities) on the first images of each dataset.


rule error_stats:
    input:
        manifest=preset_manifest("{dataset}"),
        images=images_dir("{dataset}"),
        weights=model_weights(),
    output:
        f"{RESULTS}/error_stats/{{dataset}}/{{run}}.csv",
    params:
        run=lambda wc: RUNS[wc.run],
        signature=lambda wc: error_stats_job(wc).signature,
        code=lambda wc: code("rules/scripts/error_stats.py", method=RUNS[wc.run].method),
    log:
        f"logs/{config['preset']}/error_stats/{{dataset}}/{{run}}.log",
    threads: 1
    resources:
        gpu=1 if MODEL["device"].startswith("cuda") else 0,
        mem_mb=config["resources"]["mem_mb"],
        runtime=lambda wc: 60 + int(config["error_stats"]["images"] * RUNS[wc.run].num_steps
                                    * config["error_stats"]["max_iter"] * config["resources"]["seconds_per_nfe"] / 60),
    conda:
        "../envs/diffinv.yaml"
    script:
        "scripts/error_stats.py"


rule collect_error_stats:
    input:
        [f"{RESULTS}/error_stats/{dataset}/{run}.csv" for dataset in DATASETS for run in config["error_stats"]["runs"]],
    output:
        f"{RESULTS}/error_stats.csv",
    params:
        code=code("rules/scripts/collect_error_stats.py"),
    log:
        f"logs/{config['preset']}/collect_error_stats.log",
    localrule: True
    conda:
        "../envs/diffinv.yaml"
    script:
        "scripts/collect_error_stats.py"
