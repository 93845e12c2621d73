"""`lmforge submit` against a real Ray head started with `ray start --head`: a real job, run to the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from ray_head import RayHead

from lmforge import REPO_DIR as REPO  # the checkout


@pytest.fixture(scope="module")
def ray_head():
    head = RayHead()
    yield head
    head.stop()


def test_submitted_stage_succeeds_with_its_metadata_in_the_dashboard(ray_head, tmp_path, shared_data):
    from ray.job_submission import JobStatus, JobSubmissionClient

    # a config outside the repo, with an absolute output path: submit uploads the resolved config
    output = tmp_path / "tokenizer"
    config = tmp_path / "tokenizer.yaml"
    config.write_text(f"output_dir: {tmp_path / 'elsewhere'}\nvocab_size: 400\nmax_documents: 300\n"
                      f"sources:\n  - path: {shared_data / 'pretrain' / 'fever.txt'}\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmforge.cli",
            "submit",
            "train-tokenizer",
            str(config),
            f"output_dir={output}",
            "--address",
            ray_head.dashboard_url,
        ],
        check=False,
        cwd=tmp_path,
        env=ray_head.env | {"PYTHONPATH": os.environ.get("PYTHONPATH", "")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "lmforge train-tokenizer: done" in result.stdout  # the job's own log, tailed

    client = JobSubmissionClient(ray_head.dashboard_url)
    [job] = client.list_jobs()
    assert job.status == JobStatus.SUCCEEDED, client.get_job_logs(job.submission_id)[-3000:]
    assert job.submission_id.startswith("lmforge-train-tokenizer-")
    info = client.get_job_info(job.submission_id)
    print(info.metadata)  # shown when an assertion below fails
    assert info.metadata["stage"] == "train-tokenizer"
    assert info.metadata["output_dir"] == str(output)
    assert info.metadata["config_path"] == str(config)
    assert info.metadata["job_name"] == "lmforge train-tokenizer tokenizer"
    assert (
        len(info.metadata["config_sha256"]) == 64 and info.metadata["config_sha256"][:8] in job.submission_id
    )
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["stage"] == "train-tokenizer" and manifest["config"]["output_dir"] == str(output)
    assert not (tmp_path / "elsewhere").exists()
    assert not list((REPO / ".lmforge-submit").glob("*.yaml"))  # the uploaded copy does not stay behind
