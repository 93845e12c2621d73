"""`lmforge pipeline CONFIG`: stages in order, in one process on one Ray, each skipped when up to date.

    resolve and validate every stage's config (a typo in the last stage fails before the first runs)
      -> start or join Ray once, sized for the largest stage
      -> per stage: fingerprint its config and inputs (lmforge/fingerprint.py)
           up to date (its manifest.json + fingerprint.json match) -> skipped
           otherwise -> run it, then write fingerprint.json beside its manifest.json
      -> a summary table: stage, skipped/ran and why, seconds, output

Inputs are fingerprinted just before each stage runs, so a stage that reran upstream makes this one rerun.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from lmforge.config import (
    ConfigError,
    PipelineConfig,
    PipelineStageConfig,
    RayConfig,
    load_config,
    validate_config,
)
from lmforge.fingerprint import FINGERPRINT_NAME, fingerprint, why_stale, write_fingerprint
from lmforge.manifest import MANIFEST_NAME, Manifest
from lmforge.stages import STAGES


@dataclass(frozen=True)
class PlannedStage:
    name: str
    config: BaseModel
    label: str  # "stages.3 (pretrain)", for messages


@dataclass
class StageRun:
    stage: str
    status: str  # ran, skipped or failed
    reason: str
    seconds: float
    output: str


def run_pipeline(cfg: PipelineConfig) -> Manifest:
    """Run (or skip) each stage of `cfg` in order; print a summary table; the manifest lists what happened."""
    planned = resolve_stages(cfg)
    ray_cfg = pipeline_ray(cfg, planned)
    if ray_cfg is not None:
        from lmforge.runtime import init_ray  # the stages' own init_ray calls then find this Ray running

        init_ray(ray_cfg)
    runs: list[StageRun] = []
    try:
        for index, step in enumerate(planned, start=1):
            runs.append(run_step(step, f"[{index}/{len(planned)}]"))
    except BaseException as exc:
        runs.append(StageRun(planned[len(runs)].name, "failed", type(exc).__name__, 0.0, ""))
        raise
    finally:
        print(summary_table(runs), flush=True)
    return Manifest(
        stage="pipeline",
        config=cfg.model_dump(mode="json"),
        outputs={"stages": [asdict(run) for run in runs]},
        counts={status: sum(run.status == status for run in runs) for status in ("ran", "skipped")},
    )


def resolve_stages(cfg: PipelineConfig) -> list[PlannedStage]:
    """Every stage's validated config; errors name the stage's position, its file and the field."""
    names = [name for name in STAGES if name != "pipeline"]
    planned = []
    for index, entry in enumerate(cfg.stages):
        label = f"stages.{index} ({entry.stage})"
        if entry.stage not in names:
            raise ConfigError(f"{label}: unknown stage; one of {', '.join(names)}")
        model = STAGES[entry.stage].config
        try:
            if isinstance(entry.config, dict):
                stage_cfg = validate_config(model, entry.config, entry.overrides, where="inline config")
            else:
                stage_cfg = load_config(model, entry.config, entry.overrides)
        except ConfigError as exc:
            raise ConfigError(f"{label}: {exc}") from None
        planned.append(PlannedStage(entry.stage, stage_cfg, label))
    for step in planned[:-1]:
        if STAGES[step.name].rerun == "blocks":
            raise ConfigError(f"{step.label}: runs until stopped, so it can only be the last stage")
    return planned


def resolved_pipeline(cfg: PipelineConfig) -> PipelineConfig:
    """The same pipeline with each stage's config read, overridden and inlined: it needs no other file."""
    return cfg.model_copy(update={"stages": [
        PipelineStageConfig(stage=step.name, config=step.config.model_dump(mode="json"))
        for step in resolve_stages(cfg)
    ]})


def pipeline_ray(cfg: PipelineConfig, planned: list[PlannedStage]) -> RayConfig | None:
    """cfg.ray, else the largest of the stages' Ray settings; None when no stage uses Ray."""
    if cfg.ray is not None:
        return cfg.ray
    rays = [step.config.ray for step in planned if isinstance(getattr(step.config, "ray", None), RayConfig)]
    if not rays:
        return None
    return RayConfig(
        address=next((ray.address for ray in rays if ray.address), None),
        num_cpus=max((ray.num_cpus for ray in rays if ray.num_cpus), default=None),
        object_store_memory_mb=max((ray.object_store_memory_mb for ray in rays if ray.object_store_memory_mb),
                                   default=None),
    )


def run_step(step: PlannedStage, position: str) -> StageRun:
    """Skip the stage if its output is up to date, else run it and stamp its output with the fingerprint."""
    stage = STAGES[step.name]
    out = stage.output_dir(step.config)
    current = fingerprint(step.name, step.config, out) if out else None
    reason = why_stale(out, current)
    if reason is None:
        print(f"lmforge pipeline {position} {step.name}: up to date, skipped ({_short(out)})", flush=True)
        return StageRun(step.name, "skipped", "up to date", 0.0, _short(out))
    print(f"lmforge pipeline {position} {step.name}: running ({reason})", flush=True)
    if out:
        prepare_rerun(out, stage.rerun == "resumes")
    started = time.perf_counter()
    manifest = stage.function()(step.config)
    seconds = time.perf_counter() - started
    if out:
        write_fingerprint(out, current)
    return StageRun(step.name, "ran", reason, seconds, _short(out) if out else _first_output(manifest))


def prepare_rerun(out: Path, resumes: bool) -> None:
    """Drop the old stamp;
    move a finished run aside where rerunning would resume it instead of starting over."""
    (out / FINGERPRINT_NAME).unlink(missing_ok=True)
    if resumes and (out / MANIFEST_NAME).is_file():
        # made from other inputs or settings: resuming would continue from its last checkpoint
        aside = out.with_name(f"{out.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        out.rename(aside)
        print(f"lmforge pipeline: moved the finished run {_short(out)} to {_short(aside)}; starting afresh",
              flush=True)


def summary_table(runs: list[StageRun]) -> str:
    rows = [("stage", "status", "seconds", "output")]
    rows += [(run.stage, run.status if run.status != "ran" else f"ran ({run.reason})", f"{run.seconds:.1f}",
              run.output) for run in runs]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["", "lmforge pipeline summary:"]
    lines += ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True))
              + "  " + row[3] for row in rows]
    return "\n".join(lines)


def _first_output(manifest: Any) -> str:
    """A stage without an output directory (serve): its first plain output, e.g. the URL."""
    outputs = getattr(manifest, "outputs", {}) or {}
    return next((str(value) for value in outputs.values() if isinstance(value, str)), "")


def _short(path: Path) -> str:
    """`path` relative to the working directory when it lies inside it (shorter in the summary)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
