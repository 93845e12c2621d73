"""`lmforge submit STAGE CONFIG [key=value ...]`: run a stage (or a pipeline) as a Ray job,
named for the dashboard.

    resolve the config (file + overrides + ${VAR}) and hash it
      -> write it into this checkout's .lmforge-submit/
           (uploaded with the code, so a config from anywhere works)
      -> JobSubmissionClient.submit_job("python jobs/<stage>.py .lmforge-submit/<id>.yaml",
           working_dir = this checkout without .venv, runs/, bench/work, .git, caches,
           submission id lmforge-<stage>-<config sha8>-<time>, metadata: job_name, stage, config_sha256, ...)
      -> tail the job's logs until it ends; exit 0 only when it SUCCEEDED (--no-wait: return at once)

The job runs exactly the config its metadata's hash names: `${VAR}`s are expanded here, on the submitting
machine. Relative paths in it resolve in the job's copy of the working dir (temporary): use paths on
storage every node sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import sys
import time
from pathlib import Path

import yaml
from pydantic import BaseModel

import lmforge
from lmforge import REPO_DIR
from lmforge.config import PipelineConfig, load_config
from lmforge.fingerprint import config_sha256
from lmforge.stages import STAGES

# resolved configs ride along with the working dir; not in .gitignore, which Ray's upload skips
UPLOAD_DIR = ".lmforge-submit"
# Ray also skips .git, .venv and what .gitignore lists; these stay out even with
# RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1. The upload must stay under Ray's limit (512 MiB zipped, the gRPC
# message size): bench/work alone is ~0.5 GB.
EXCLUDES = ["/.git", "/.venv", "/runs/", "/bench/work/", "__pycache__/", ".pytest_cache/", ".ruff_cache/",
            "*.egg-info/", "/build/"]


def resolved_config(stage: str, config_path: str, overrides: list[str]) -> BaseModel:
    """The stage's validated config;
    a pipeline's with every stage's config inlined (one self-contained file)."""
    cfg = load_config(STAGES[stage].config, config_path, overrides)
    if isinstance(cfg, PipelineConfig):
        from lmforge.pipeline import resolved_pipeline

        cfg = resolved_pipeline(cfg)
    return cfg


def job_metadata(stage: str, cfg: BaseModel, config_path: str, overrides: list[str]) -> dict[str, str]:
    """What the dashboard shows beside the job (Ray takes strings only); job_name is its display name."""
    metadata = {
        "stage": stage,
        "config_sha256": config_sha256(cfg.model_dump(mode="json")),
        "config_path": config_path,
        "lmforge_version": lmforge.__version__,
    }
    if overrides:
        metadata["overrides"] = shlex.join(overrides)
    if getattr(cfg, "run_name", None):
        metadata["run_name"] = cfg.run_name
    output = STAGES[stage].output_dir(cfg)  # None for a pipeline: its stages have the outputs
    if output:
        metadata["output_dir"] = str(output)
    if isinstance(cfg, PipelineConfig):
        metadata["stages"] = ",".join(step.stage for step in cfg.stages)
    named = metadata.get("run_name") or (
        Path(metadata["output_dir"]).name if output else Path(config_path).stem
    )
    metadata["job_name"] = f"lmforge {stage} {named}"
    return metadata


def submit(stage: str, config_path: str, overrides: list[str], address: str | None = None, wait: bool = True,
           entrypoint_num_cpus: float = 0, entrypoint_memory: int | None = None,
           entrypoint_resources: dict[str, float] | None = None) -> int:
    """Submit `jobs/<stage>.py` with the resolved config;
    with `wait`, tail its logs and return 0 if it SUCCEEDED."""
    from ray.job_submission import JobSubmissionClient

    script = STAGES[stage].job_file
    if not (REPO_DIR / script).is_file():
        raise FileNotFoundError(f"{REPO_DIR / script}: no job entry point for stage {stage!r}")
    cfg = resolved_config(stage, config_path, overrides)
    metadata = job_metadata(stage, cfg, config_path, overrides)
    submission_id = f"lmforge-{stage}-{metadata['config_sha256'][:8]}-{time.strftime('%Y%m%d-%H%M%S')}"
    # before writing anything: fails fast when the cluster is unreachable
    client = JobSubmissionClient(address)
    uploaded = REPO_DIR / UPLOAD_DIR / f"{submission_id}.yaml"
    uploaded.parent.mkdir(exist_ok=True)
    uploaded.write_text(f"# {stage} config resolved by lmforge submit from {config_path}\n"
                        + yaml.safe_dump(cfg.model_dump(mode="json"), allow_unicode=True, sort_keys=False),
                        encoding="utf-8")
    try:
        client.submit_job(
            entrypoint=shlex.join(["python", str(script), str(uploaded.relative_to(REPO_DIR))]),
            submission_id=submission_id,
            runtime_env={"working_dir": str(REPO_DIR), "excludes": EXCLUDES,
                         "env_vars": {"PYTHONUNBUFFERED": "1"}},  # progress lines reach the logs as printed
            metadata=metadata,
            # the cluster's head has CPU 0 and runs the drivers, which mostly wait on Ray tasks
            entrypoint_num_cpus=entrypoint_num_cpus,
            entrypoint_memory=entrypoint_memory,
            entrypoint_resources=entrypoint_resources,  # custom resources name the node(s) it may run on
        )
    finally:  # submit_job has uploaded the working dir by now
        uploaded.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: another submission is under way
            uploaded.parent.rmdir()
    print(f"lmforge submit: {submission_id} "
          f"({metadata['job_name']}, config sha256 {metadata['config_sha256'][:12]})", flush=True)
    if not wait:
        print(f"  follow: ray job logs -f {submission_id}    stop: ray job stop {submission_id}")
        return 0
    return follow(client, submission_id)


def follow(client, submission_id: str) -> int:
    """Print the job's logs as they come until it ends; 0 if it SUCCEEDED, else 1."""
    from ray.job_submission import JobStatus

    async def tail() -> None:
        async for lines in client.tail_job_logs(submission_id):
            print(lines, end="", flush=True)

    try:
        asyncio.run(tail())
        status = client.get_job_status(submission_id)
        while not status.is_terminal():  # the log stream can close a moment before the status is final
            time.sleep(1)
            status = client.get_job_status(submission_id)
    except KeyboardInterrupt:
        print(f"\nlmforge submit: stopped following; the job goes on (ray job stop {submission_id})",
              file=sys.stderr)
        return 130
    print(f"lmforge submit: {submission_id} {status.value}", flush=True)
    return 0 if status == JobStatus.SUCCEEDED else 1
