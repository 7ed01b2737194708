"""The workflow's configuration: schema validation with defaults, semantic checks, the run list.

The Snakefile calls :func:`prepare` once, before any job is scheduled, so a bad value fails the
whole invocation with a message naming its key (``runs.fpi.params.Q: ...``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping


from ..api import Run
from ..methods import ParamError, get_method


class ConfigError(ValueError):
    """A configuration value that cannot run; the message starts with the key."""


@dataclass(frozen=True)
class ModelSpec:
    """The model a job runs: backend kind, weights (Hub id at a revision; the fitted mixture is named by
    the file the workflow makes, whose digest each row records), dtype, device and input resolution."""

    kind: str
    dtype: str
    device: str
    resolution: int
    repo_id: str | None = None
    revision: str | None = None
    latent_dtype: str | None = None   # the trajectory's dtype (Stable Diffusion); None: the network's
    channels_last: bool = False
    compile: bool = False

    @classmethod
    def from_config(cls, model: dict[str, Any], run: Run | None = None) -> "ModelSpec":
        """The configured model, in ``run``'s own dtype if it sets one."""
        dtype = run.dtype if run is not None and run.dtype else model["dtype"]
        return cls(model["kind"], dtype, model["device"], int(model["resolution"]), model.get("repo_id"),
                   model.get("revision"), model.get("latent_dtype"), bool(model.get("channels_last", False)),
                   bool(model.get("compile", False)))

    @property
    def identity(self) -> str:
        """What the weights are: ``<repo_id>@<revision>``, or the kind for a model fitted by the workflow."""
        return f"{self.repo_id}@{self.revision}" if self.repo_id else self.kind


@dataclass(frozen=True)
class InvertJob:
    """Every setting one invert job reads, built once from the validated config (:meth:`from_config`).

    Its :attr:`signature` covers every setting that can change a row; the workflow passes it to the rule
    as a parameter (a change reruns the job) and the shard's checkpoint is keyed on it. ``batch_size``
    stays out: a row equals its batch-size-1 row (bit for bit on the analytic model, to round-off on a
    UNet), so changing it reruns nothing.
    """

    run: Run
    dataset: str
    model: ModelSpec
    prompt: str = "caption"                 # caption: the manifest's caption; empty: ""
    lpips: tuple[str, ...] = ()             # LPIPS nets scored
    lpips_trunk: str = "torchvision"        # where their ImageNet trunks come from
    quantize: bool = True                   # score 8-bit reconstructions (the papers), or the float output
    qualitative: int = 0                    # images with manifest index below this keep their PNG
    save_latents: bool = False
    batch_size: int = 1

    @classmethod
    def from_config(cls, config: dict[str, Any], run: Run, dataset: str) -> "InvertJob":
        metrics = config["metrics"]
        return cls(run, dataset, ModelSpec.from_config(config["model"], run), config["inversion"]["prompt"],
                   tuple(metrics["lpips"]), metrics["lpips_trunk"], bool(metrics["quantize"]),
                   int(config["qualitative"]), bool(config["save_latents"]), int(config["batch_size"]))

    @property
    def signature(self) -> str:
        return json.dumps({"run": json.loads(self.run.signature), "dataset": self.dataset,
                           "model": asdict(self.model), "prompt": self.prompt, "lpips": list(self.lpips),
                           "lpips_trunk": self.lpips_trunk if self.lpips else None, "quantize": self.quantize,
                           "qualitative": self.qualitative, "save_latents": self.save_latents}, sort_keys=True)


@dataclass(frozen=True)
class ErrorStatsJob:
    """Every setting one error-statistics job (Figure 2) reads; the rule's parameter is its signature."""

    run: Run
    dataset: str
    model: ModelSpec
    prompt: str
    images: int
    tol: float
    max_iter: int

    @classmethod
    def from_config(cls, config: dict[str, Any], run: Run, dataset: str) -> "ErrorStatsJob":
        stats = config["error_stats"]
        return cls(run, dataset, ModelSpec.from_config(config["model"], run), config["inversion"]["prompt"],
                   int(stats["images"]), float(stats["tol"]), int(stats["max_iter"]))

    @property
    def signature(self) -> str:
        return json.dumps({**asdict(self), "run": json.loads(self.run.signature)}, sort_keys=True)


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def validate(config: dict[str, Any], schema_path: str | Path) -> dict[str, Any]:
    """Schema check with defaults filled in (in place); the first error names its key. NaN and infinity
    are refused everywhere (JSON Schema's ``minimum`` lets NaN through): no setting means them."""
    from jsonschema import ValidationError
    from snakemake_interface_common.exceptions import WorkflowError
    from snakemake.utils import validate as schema_validate

    _refuse_non_finite(config, [])
    try:
        schema_validate(config, str(Path(schema_path).resolve()), set_default=True)
    except WorkflowError as exc:
        error = exc.__context__  # snakemake raises its WorkflowError while handling jsonschema's error
        if not isinstance(error, ValidationError):
            raise
        raise ConfigError(f"config key {_key(error.absolute_path)}: {error.message}") from None
    return config


def _refuse_non_finite(value: Any, path: list) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key {_key(path)}: must be a finite number, got {value}")
    if isinstance(value, dict):
        for key, item in value.items():
            _refuse_non_finite(item, [*path, key])
    elif isinstance(value, (list, tuple)):
        for k, item in enumerate(value):
            _refuse_non_finite(item, [*path, k])


def expand_runs(config: dict[str, Any]) -> tuple[dict[str, Run], dict[str, str]]:
    """The configured runs plus their sweep variants, and the aliases of variants equal to a run.

    A variant ``fpi-K3`` that resolves to the same setting as ``fpi`` is not run twice: it is
    returned as the alias ``{"fpi-K3": "fpi"}``.
    """
    inv = config["inversion"]
    runs: dict[str, Run] = {}
    for name, spec in config["runs"].items():
        try:
            method = get_method(spec["method"])
        except KeyError as exc:
            raise ConfigError(f"config key runs.{name}.method: {exc.args[0]}") from None
        try:
            params = method.resolve(dict(spec.get("params", {})))
        except ParamError as exc:
            raise ConfigError(f"config key runs.{name}.params.{exc.name}: {exc.reason}") from None
        except TypeError as exc:
            raise ConfigError(f"config key runs.{name}.params: {exc}") from None
        runs[name] = Run(method.name, params, spec.get("num_steps", inv["num_steps"]),
                         float(spec.get("guidance", inv["guidance"])),
                         float(spec.get("reconstruction_guidance", inv["reconstruction_guidance"])), spec.get("dtype"),
                         name)
    for run in runs.values():
        if get_method(run.method).state != "latent" and run.guidance != run.reconstruction_guidance:
            raise ConfigError(f"config key runs.{run.name}: an exact method needs the same guidance in both "
                              "directions")

    variants: dict[str, Run] = {}
    aliases: dict[str, str] = {}
    by_signature = {r.signature: r.name for r in runs.values()}
    for index, spec in enumerate(config.get("sweeps", [])):
        sweep = spec["param"]
        for base_name in spec["runs"]:
            if base_name not in runs:
                raise ConfigError(f"config key sweeps.{index}.runs: {base_name!r} is not a configured run")
            base = runs[base_name]
            for value in spec["values"]:
                if sweep == "K":
                    if "K" not in base.params:
                        raise ConfigError(f"config key sweeps.{index}.runs: method {base.method!r} has no parameter K")
                    try:
                        get_method(base.method).resolve({"K": value})
                    except ParamError as exc:
                        raise ConfigError(f"config key sweeps.{index}.values: {base.method}'s {exc}") from None
                    name, run = f"{base_name}-K{value}", replace(base, params={**base.params, "K": value})
                else:
                    name, run = f"{base_name}-N{value}", replace(base, num_steps=value)
                if run.signature in by_signature:
                    aliases[name] = by_signature[run.signature]
                else:
                    variants[name] = replace(run, name=name)
                    by_signature[run.signature] = name
    return {**runs, **variants}, aliases


# The model options a preset can set, each a keyword of the backends that take it (their class's options).
MODEL_OPTIONS = ("latent_dtype", "channels_last", "compile")


def shard_ranges(count: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, stop) of each shard of a ``count``-image manifest."""
    return [(k * shard_size, min(count, (k + 1) * shard_size)) for k in range(math.ceil(count / shard_size))]


def prepare(config: dict[str, Any], schema_path: str | Path) -> tuple[dict[str, Run], dict[str, str]]:
    """Validate, fill defaults and check every cross-reference; returns ``expand_runs(config)``."""
    validate(config, schema_path)
    runs, aliases = expand_runs(config)
    for name in config["error_stats"]["runs"]:
        if name not in runs:
            raise ConfigError(f"config key error_stats.runs: {name!r} is not a configured run")
        if runs[name].method not in ("ife", "ife_noerr", "ddim"):
            raise ConfigError(f"config key error_stats.runs: {name!r} uses {runs[name].method!r}; the estimation "
                              "error is defined for ife, ife_noerr and ddim")
    report = config["report"]
    for name in report["qualitative_runs"]:
        if name not in runs and name not in aliases:
            raise ConfigError(f"config key report.qualitative_runs: {name!r} is not a configured run")
    if report["images"] > config["qualitative"]:
        raise ConfigError(f"config key report.images: {report['images']} images are shown but only the first "
                          f"qualitative = {config['qualitative']} keep their reconstructions")
    model = config["model"]
    backend = _backend(model)
    from ..evaluation.metrics import min_side

    smallest = min_side(config["metrics"]["lpips"])
    if model["resolution"] < smallest:
        nets = config["metrics"]["lpips"]
        raise ConfigError(f"config key model.resolution: {model['resolution']} px is below the {smallest} px that "
                          f"SSIM{' and LPIPS ' + '/'.join(nets) if nets else ''} need to score an image")
    multiple = backend.image_multiple
    if multiple and model["resolution"] % multiple:
        raise ConfigError(f"config key model.resolution: the {model['kind']} model needs a multiple of {multiple}")
    for key in MODEL_OPTIONS:
        if model.get(key) and key not in backend.options:
            takes = [o for o in MODEL_OPTIONS if o in backend.options]
            raise ConfigError(f"config key model.{key}: not an option of the {model['kind']} model (it takes "
                              f"{', '.join(takes) or 'none of ' + ', '.join(MODEL_OPTIONS)})")
    _check_weights(model, backend)
    _check_mixture_path(model)
    path = model_path(model)
    for name in config["runs"]:  # a sweep variant has its run's method
        paths = get_method(runs[name].method).paths
        if path not in paths:
            raise ConfigError(f"config key runs.{name}.method: {runs[name].method} is defined on the "
                              f"{' and '.join(paths)} path only; this {model['kind']} model is on the {path} path")
    if backend.guidance == "none":
        for run in runs.values():
            for key in ("guidance", "reconstruction_guidance"):
                if getattr(run, key) != 1.0:
                    raise ConfigError(f"config key runs.{run.name}.{key} (or inversion.{key}): the {model['kind']} "
                                      f"model is unconditional, so guidance {getattr(run, key)} has nothing to guide "
                                      "towards; set it to 1")
    if "train" in model:
        _check_training(model)
    if model["kind"] == "gaussian_mixture":
        from .data import PHOTOS

        unknown = [p for p in model["fit"]["photos"] if p not in PHOTOS]
        if unknown:
            raise ConfigError(f"config key model.fit.photos: unknown photos {unknown}; known: {sorted(PHOTOS)}")
        if model["resolution"] % model["fit"]["patch_size"]:
            raise ConfigError("config key model.resolution: must be a multiple of model.fit.patch_size")
    for run in runs.values():
        try:
            nfe_estimate(run, model)  # builds the run's grid: a step count the model's schedule cannot take fails
        except (ValueError, KeyError) as exc:
            raise ConfigError(f"config key {_num_steps_key(config, run.name)}: {run.name} at {run.num_steps} steps: "
                              f"{exc}") from None
    return runs, aliases


def _num_steps_key(config: dict[str, Any], name: str) -> str:
    """Where a run's step count is set: its own ``num_steps``, a num_steps sweep, or ``inversion.num_steps``."""
    if name in config["runs"]:
        return f"runs.{name}.num_steps" if "num_steps" in config["runs"][name] else "inversion.num_steps"
    base, _, variant = name.rpartition("-")
    for index, sweep in enumerate(config.get("sweeps", [])):
        if base in sweep["runs"] and variant.startswith("N") and sweep["param"] == "num_steps":
            return f"sweeps.{index}.values"
    return _num_steps_key(config, base) if base in config["runs"] else "inversion.num_steps"


def _check_weights(model: dict[str, Any], backend) -> None:
    """A Hub backend's weights are fetched (repo_id at a pinned revision) or, where it is trainable, trained
    by the workflow (model.train): exactly one of the two."""
    if "train" in model and not backend.trainable:
        raise ConfigError(f"config key model.train: the settings of a network the workflow trains; a "
                          f"{model['kind']} model is not trained by the workflow")
    if not backend.hub:
        return
    fetched = [key for key in ("repo_id", "revision") if key in model]
    if "train" in model:
        if fetched:
            raise ConfigError(f"config key model.{fetched[0]}: the {model['kind']} model is trained by the workflow "
                              "(model.train) or fetched (model.repo_id and model.revision), not both")
        return
    missing = [key for key in ("repo_id", "revision") if key not in model]
    if missing:
        raise ConfigError(f"config key model.{missing[0]}: the {model['kind']} model's weights are a diffusers "
                          "repository at a pinned commit: set repo_id and revision"
                          + (" (or train it: model.train)" if backend.trainable else ""))


def _check_training(model: dict[str, Any]) -> None:
    """A trained network sees none of the evaluation photographs and is evaluated at the size it learned."""
    from ..models.pixel import downsampling
    from .data import DEMO_EVAL, PHOTOS

    train = model["train"]
    unknown = [p for p in train["photos"] if p not in PHOTOS]
    if unknown:
        raise ConfigError(f"config key model.train.photos: unknown photos {unknown}; known: {sorted(PHOTOS)}")
    held_out = [p for p in train["photos"] if p in DEMO_EVAL]
    if held_out:
        raise ConfigError(f"config key model.train.photos: {held_out} are evaluation photographs (the photos "
                          "manifest is cut from them); a network trained on them would be scored on its training data")
    if train["size"] != model["resolution"]:
        raise ConfigError(f"config key model.resolution: {model['resolution']}, but the network is trained at "
                          f"model.train.size = {train['size']} px; evaluate it at that size")
    multiple = downsampling(len(train["channels"]))
    if train["size"] % multiple:
        raise ConfigError(f"config key model.train.size: a UNet with {len(train['channels'])} levels needs a "
                          f"multiple of {multiple}")
    if any(c % train["norm_groups"] for c in train["channels"]):
        raise ConfigError(f"config key model.train.channels: {train['channels']} must all be multiples of "
                          f"model.train.norm_groups = {train['norm_groups']}")


def _check_mixture_path(model: dict[str, Any]) -> None:
    flow = model.get("flow")
    if model["kind"] != "gaussian_mixture":
        for key in ("path", "flow"):
            if key in model:
                raise ConfigError(f"config key model.{key}: the analytic model's path; a {model['kind']} model's "
                                  "path is its scheduler config's")
    elif flow is not None and model.get("path") != "flow":
        raise ConfigError("config key model.flow: the flow path's settings; set model.path: flow to use them")
    elif flow and flow.get("use_dynamic_shifting") and "image_seq_len" not in flow:
        raise ConfigError("config key model.flow.image_seq_len: use_dynamic_shifting shifts the grid for the "
                          "image's token count, which it needs")
    elif flow and "image_seq_len" in flow and not flow.get("use_dynamic_shifting"):
        raise ConfigError("config key model.flow.image_seq_len: used only with use_dynamic_shifting: true")


def _backend(model: Mapping[str, Any]):
    from ..models import backend

    try:
        return backend(model["kind"])
    except KeyError as exc:
        raise ConfigError(f"config key model.kind: {exc.args[0]}") from None


def model_path(model: Mapping[str, Any]) -> str:
    """The Gaussian path of the configured model: its backend's, or the mixture's ``model.path``."""
    return _backend(model).path or model.get("path", "vp")


def mixture_path(model: dict[str, Any]) -> dict[str, Any]:
    """Keywords of :class:`~diffinv.models.GaussianMixtureDenoiser` for ``model.path``: none on the VP path;
    on the flow path its scheduler config (SD3's, updated with ``model.flow``) and schedule options."""
    if model.get("path", "vp") != "flow":
        return {}
    from ..schedule import SD3_SCHEDULER_CONFIG

    flow = dict(model.get("flow") or {})
    options = {key: flow.pop(key) for key in ("image_seq_len", "sigmas") if key in flow}
    return {"scheduler_config": {**SD3_SCHEDULER_CONFIG, **flow}, "schedule_options": options}


def nfe_estimate(run: Run, model: Mapping[str, Any] | str = "stable_diffusion") -> int:
    """Network passes per image for inversion plus reconstruction (for scheduler runtimes) on the configured
    ``model`` (the config's ``model`` section, or a kind alone for a VP model or a flow backend).

    The grid: the flow mixture's own (``model.path: flow``), SD3's for the SD3 and FLUX.1 backends (their
    grids share the top level sigma = 1 that makes BELM, EDICT and ERDDCI stop a level early; FLUX's
    resolution shift moves only which levels fall below ReNoise's ``first_timestep``), SD's otherwise."""
    from ..schedule import Schedule

    model = {"kind": model} if isinstance(model, str) else model
    backend, method = _backend(model), get_method(run.method)
    if backend.path is None and model.get("path") == "flow":
        path = mixture_path(model)
        sched = Schedule.from_scheduler_config(path["scheduler_config"], run.num_steps, **path["schedule_options"])
    elif backend.path == "flow":
        sched = Schedule.rectified_flow(run.num_steps)
    else:
        sched = Schedule.stable_diffusion(run.num_steps)
    distilled = backend.guidance == "distilled"
    passes = {w: 1 if w == 1 or distilled else 2 for w in (run.guidance, run.reconstruction_guidance)}
    return method.nfe(run.params, sched) * passes[run.guidance] + method.reconstruct_nfe(sched) * passes[
        run.reconstruction_guidance]
