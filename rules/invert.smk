# Stage 2: invert + reconstruct, one job per (dataset, run, shard); then one table of every row.


rule invert:
    """Every image of a shard with one run: NFE, seconds, peak memory, status and metrics per image."""
    input:
        unpack(lambda wc: {"manifest": preset_manifest(wc.dataset), "images": images_dir(wc.dataset),
                           "weights": model_weights()}),
        unpack(lambda wc: {f"lpips_{net}": path for net, path in lpips_trunks().items()}),
    output:
        rows=f"{RESULTS}/runs/{{dataset}}/{{run}}/{{shard}}.csv",
        recon=directory(f"{RESULTS}/recon/{{dataset}}/{{run}}/{{shard}}"),
    params:
        run=lambda wc: RUNS[wc.run],
        # every setting that can change a row (not batch_size: rows equal batch size 1), and the code
        signature=lambda wc: invert_job(wc).signature,
        code=lambda wc: code("rules/scripts/invert.py", method=RUNS[wc.run].method),
        shard=lambda wc: shard_ranges(image_count(wc.dataset), config["shard_size"])[int(wc.shard)],
        # finished images of an interrupted job; not an output, so a failed job does not delete it
        checkpoint=f"{RESULTS}/partial/{{dataset}}/{{run}}/{{shard}}",
    log:
        f"logs/{config['preset']}/invert/{{dataset}}/{{run}}/{{shard}}.log",
    threads: 1
    resources:
        gpu=1 if MODEL["device"].startswith("cuda") else 0,
        mem_mb=config["resources"]["mem_mb"],
        runtime=invert_runtime,
    conda:
        "../envs/diffinv.yaml"
    script:
        "scripts/invert.py"


rule collect:
    """Every per-image row in one table, a mean per (dataset, run), and the run settings; each shard's rows
    are checked against its slice of the manifest first."""
    input:
        shards=shard_outputs,
        manifests=[preset_manifest(dataset) for dataset in DATASETS],
    output:
        rows=f"{RESULTS}/results.csv",
        summary=f"{RESULTS}/summary.csv",
        runs=f"{RESULTS}/runs.csv",
    params:
        runs=RUNS,
        aliases=ALIASES,
        shard_size=config["shard_size"],
        code=code("rules/scripts/collect.py"),
    log:
        f"logs/{config['preset']}/collect.log",
    localrule: True
    conda:
        "../envs/diffinv.yaml"
    script:
        "scripts/collect.py"
