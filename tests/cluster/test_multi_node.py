"""The stages on a real multi-node Ray cluster on this machine, through `lmforge submit`, and nodes lost.

One cluster for the module: a head with CPU 0 (it runs the job drivers, as on a real cluster) and two
worker nodes with 2 CPUs each and a custom resource naming them (`node_a`, `node_b`); a temp directory
stands in for the shared file system (EFS/NFS) every node sees. Where the work ran comes from Ray's own
state (the nodes of each job's tasks and actors), not from our logs.

    prepare-pretrain, prepare-sft   tasks on both worker nodes
    pretrain                        2 workers, placement_strategy SPREAD: one per node
    convert                         --entrypoint-resources {"node_b": 1}: the driver runs on node-b
    batch-infer                     the vLLM engine actor and the data tasks on worker nodes
    node loss (pretrain)            node-b killed after a checkpoint; a new node joins; the run resumes
                                    from the checkpoint and reaches the uninterrupted run's weights
    node loss (prepare-pretrain)    a worker node killed mid-stage; the shards are byte-identical

Tests run in file order and share the cluster; the node-loss tests come last.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from ray_head import RayHead
from training_helpers import (
    checkpoints,
    last_logged_step,
    max_difference,
    metrics,
    registered_checkpoint_step,
    weights,
)

from lmforge.config import TrainConfig
from lmforge.train.model import TINY_CONFIGS

JOB_TIMEOUT_S = 600  # a bound on every job: a stage that hangs fails its test


@pytest.fixture(scope="module")
def cluster():
    head = RayHead(num_cpus=0, object_store_mb=200)
    # Ray Train's controller polls its workers every 2 s and each checkpoint report waits for a poll
    head.env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.2"
    try:
        head.add_node("node-a", num_cpus=2, resources={"node_a": 1})
        head.add_node("node-b", num_cpus=2, resources={"node_b": 1})
        yield head
    finally:
        head.stop()


@pytest.fixture(scope="module")
def shared_fs(tmp_path_factory) -> Path:
    """The directory every node reads inputs from and writes outputs to."""
    return tmp_path_factory.mktemp("shared_fs")


def submit(cluster: RayHead, stage: str, config: dict, config_dir: Path, *extra: str,
           wait: bool = True) -> str:
    """`lmforge submit STAGE CONFIG` as a user runs it; returns the submission id
    (with `wait`, after the job SUCCEEDED)."""
    path = config_dir / f"{stage}-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    command = [sys.executable, "-m", "lmforge.cli", "submit", stage, str(path), "--address",
               cluster.dashboard_url, *extra, *([] if wait else ["--no-wait"])]
    result = subprocess.run(command, capture_output=True, text=True, timeout=JOB_TIMEOUT_S, check=False,
                            env=cluster.env | {"PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return re.search(r"lmforge submit: (lmforge-\S+)", result.stdout).group(1)


def wait_for_job(cluster: RayHead, submission_id: str, timeout_s: float = JOB_TIMEOUT_S) -> str:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(cluster.dashboard_url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.get_job_status(submission_id)
        if status.is_terminal():
            return status.value
        time.sleep(2)
    raise TimeoutError(f"job {submission_id} still running after {timeout_s} s: "
                       + client.get_job_logs(submission_id)[-3000:])


def job_logs(cluster: RayHead, submission_id: str) -> str:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(cluster.dashboard_url).get_job_logs(submission_id)


class JobPlacement:
    """Where a job's driver, tasks and actors ran, by node name, from Ray's state API."""

    def __init__(self, cluster: RayHead, submission_id: str):
        from ray.job_submission import JobSubmissionClient
        from ray.util.state import list_actors, list_nodes, list_tasks

        address = cluster.dashboard_url
        info = JobSubmissionClient(address).get_job_info(submission_id)
        names = {node.node_id: node.node_name for node in list_nodes(address=address, limit=1000)}
        query = {"address": address, "filters": [("job_id", "=", info.job_id)], "limit": 10000,
                 "raise_on_missing_output": False}
        self.driver = names.get(info.driver_node_id)
        self.tasks: dict[str, set[str]] = {}  # task name -> nodes it ran on
        self.actors: dict[str, list[str]] = {}  # actor class -> the node of each instance
        self.retried: list[tuple[str, str, int]] = []  # (name, state, attempt) of tasks that failed or reran
        if info.job_id is None:  # a driver that never connected to Ray (convert) has no Ray job
            return
        for task in list_tasks(**query):
            if task.node_id and task.type == "NORMAL_TASK":
                self.tasks.setdefault(task.name, set()).add(names.get(task.node_id))
            if task.attempt_number > 0 or task.state == "FAILED":
                self.retried.append((task.name, task.state, task.attempt_number))
        for actor in list_actors(**query):
            if actor.node_id:
                self.actors.setdefault(actor.class_name, []).append(names.get(actor.node_id))

    def task_nodes(self) -> set[str]:
        return set().union(*self.tasks.values()) if self.tasks else set()

    def actor_nodes(self, class_part: str) -> list[str]:
        return [node for name, nodes in self.actors.items() if class_part in name for node in nodes]


def pretrain_data_config(tokenizer: Path, shared_data: Path, output_dir: Path) -> dict:
    """Three shared corpora in 128-token blocks (several chunks per file, so tasks can spread)."""
    return {
        "tokenizer": str(tokenizer), "output_dir": str(output_dir), "workers": 2,
        "sources": [{"path": str(shared_data / "pretrain" / name)}
                    for name in ("fever.txt", "c4_demo.jsonl", "wiki_demo.txt")],
        "read": {"chunk_mb": 0.25},
        "pack": {"block_size": 128},
    }


def pretrain_config(storage: Path, run_name: str, data_dir: Path, **fields) -> dict:
    """The tiny llama of tests/train on the cluster's blocks: fp32 (exact resume), 2 workers spread."""
    return {
        "run_name": run_name, "storage_path": str(storage),
        "model": {"architecture": "llama", "config": TINY_CONFIGS["llama"]},
        "data": {"dir": str(data_dir), "eval_rows": 8},
        "zero": {"stage": 3, "precision": "fp32"},
        "optim": {"lr": 3e-3},
        "num_workers": 2, "placement_strategy": "SPREAD",
        "global_batch_size": 8, "micro_batch_size": 2, "max_steps": 24,
        "checkpoint": {"every_steps": 6, "keep_last": 2},
        "max_failures": 2,
        **fields,
    }


def shard_digests(directory: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.glob("blocks-*.parquet"))}


@pytest.fixture(scope="module")
def pretrain_blocks(cluster, tiny_tokenizer, shared_data, shared_fs) -> dict:
    """prepare-pretrain submitted to the cluster, undisturbed."""
    out = shared_fs / "pretrain_data"
    config = pretrain_data_config(tiny_tokenizer, shared_data, out)
    job = submit(cluster, "prepare-pretrain", config, shared_fs)
    return {"dir": out, "job": job, "placement": JobPlacement(cluster, job)}


@pytest.fixture(scope="module")
def spread_run(cluster, pretrain_blocks, shared_fs) -> dict:
    """pretrain submitted with 2 workers and placement_strategy SPREAD, undisturbed."""
    config = pretrain_config(shared_fs / "runs", "spread", pretrain_blocks["dir"])
    job = submit(cluster, "pretrain", config, shared_fs)
    return {"cfg": TrainConfig.model_validate(config), "job": job, "placement": JobPlacement(cluster, job)}


def test_prepare_pretrain_runs_its_tasks_on_both_worker_nodes(pretrain_blocks):
    placement = pretrain_blocks["placement"]
    print(placement.tasks)
    assert placement.driver == "head"
    assert {"node-a", "node-b"} <= placement.task_nodes()
    assert "head" not in placement.task_nodes()  # CPU 0
    manifest = json.loads((pretrain_blocks["dir"] / "manifest.json").read_text())
    assert manifest["outputs"]["blocks"] > 100 and shard_digests(pretrain_blocks["dir"])


def test_prepare_sft_runs_its_tasks_on_both_worker_nodes(cluster, tiny_tokenizer, shared_data, shared_fs):
    out = shared_fs / "sft_data"
    job = submit(cluster, "prepare-sft", {
        "tokenizer": str(tiny_tokenizer), "output_dir": str(out), "max_length": 256, "workers": 2,
        "sources": [{"path": str(shared_data / "sft" / name)}
                    for name in ("alpaca_zh_demo.json", "medical_sft_1K_format.jsonl")],
    }, shared_fs)
    placement = JobPlacement(cluster, job)
    print(placement.tasks)
    assert {"node-a", "node-b"} <= placement.task_nodes()
    assert json.loads((out / "manifest.json").read_text())["outputs"]["shards"]


def test_pretrain_spreads_its_two_workers_over_two_nodes(spread_run):
    workers = spread_run["placement"].actor_nodes("RayTrainWorker")
    print(spread_run["placement"].actors)
    assert sorted(workers) == ["node-a", "node-b"]
    assert [row["step"] for row in metrics(spread_run["cfg"])][-1] == 24
    assert 24 in checkpoints(spread_run["cfg"])


def test_convert_runs_on_the_node_its_resources_name(cluster, spread_run, shared_fs):
    out = shared_fs / "spread_model"
    run_dir = Path(spread_run["cfg"].storage_path) / spread_run["cfg"].run_name
    job = submit(cluster, "convert", {"checkpoint": str(run_dir), "output_dir": str(out),
                                      "dtype": "fp32"},
                 shared_fs, "--entrypoint-resources", json.dumps({"node_b": 1}))
    assert JobPlacement(cluster, job).driver == "node-b"
    assert (out / "model.safetensors").is_file()


def test_batch_infer_runs_its_engine_and_tasks_on_worker_nodes(cluster, chat_model_dir, shared_fs):
    from checkpoint_helpers import QA

    prompts = shared_fs / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": QA[i % 2][0]}, ensure_ascii=False) + "\n"
                               for i in range(12)), encoding="utf-8")
    out = shared_fs / "answers"
    job = submit(cluster, "batch-infer", {
        "model_dir": str(chat_model_dir), "sources": [{"path": str(prompts)}], "output_dir": str(out),
        "sampling": {"max_tokens": 16}, "engine": {"min_engines": 1, "max_engines": 1, "batch_size": 8},
    }, shared_fs)
    placement = JobPlacement(cluster, job)
    print(placement.actors, placement.tasks)
    engines = [node for name, nodes in placement.actors.items() if "Engine" in name or "MapWorker" in name
               for node in nodes]
    assert engines and set(engines) <= {"node-a", "node-b"}
    assert placement.task_nodes() <= {"node-a", "node-b"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["answered"] == 12, manifest["counts"]


def test_a_config_sizing_a_local_ray_joins_the_ray_start_cluster_of_this_machine(cluster, tmp_path):
    """ray.init() finds a `ray start` cluster through $RAY_TMPDIR/ray/ray_current_cluster (/tmp/ray by
    default) and refuses sizes then; init_ray joins it anyway, saying the sizes are ignored."""
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(cluster.gcs_address)
    script = ("from lmforge.config import RayConfig\nfrom lmforge.runtime import init_ray\nimport ray\n"
              "init_ray(RayConfig(num_cpus=3, object_store_memory_mb=100))\n"
              "print('JOINED', ray.get_runtime_context().gcs_address)\n")
    env = {key: value for key, value in cluster.env.items() if key != "RAY_ADDRESS"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            check=False, env=env | {"RAY_TMPDIR": str(tmp_path),
                                                    "PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    assert result.returncode == 0, result.stderr[-3000:]
    joined = result.stdout.split("JOINED ")[-1].strip()
    assert joined.endswith(":" + cluster.gcs_address.split(":")[1]), result.stdout[-2000:]
    assert "are ignored" in result.stderr


def test_a_lost_node_mid_pretrain_is_survived_with_the_uninterrupted_weights(cluster, spread_run,
                                                                              pretrain_blocks, shared_fs):
    """node-b (one of the two workers, its raylet and object store) is SIGKILLed once Ray Train has
    registered a checkpoint and the run has gone past it; a new node joins, as an autoscaler would add one.
    The run resumes from that checkpoint and ends with the weights of the undisturbed run."""
    config = pretrain_config(shared_fs / "runs", "node-lost", pretrain_blocks["dir"])
    cfg, run_dir = TrainConfig.model_validate(config), shared_fs / "runs" / "node-lost"
    job = submit(cluster, "pretrain", config, shared_fs, wait=False)
    registered = None
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        registered = registered_checkpoint_step(run_dir)
        if registered and last_logged_step(run_dir) > registered:
            break
        time.sleep(0.2)
    else:
        pytest.fail("no checkpoint registered in time: " + job_logs(cluster, job)[-3000:])
    [node_b] = [node for node in cluster.nodes if node.name == "node-b"]
    node_b.kill()
    cluster.add_node("node-c", num_cpus=2, resources={"node_b": 1})
    assert wait_for_job(cluster, job) == "SUCCEEDED", job_logs(cluster, job)[-4000:]

    steps = [row["step"] for row in metrics(cfg)]
    assert set(steps) == set(range(1, 25)) and steps[-1] == 24
    # the kill cost the run its training workers: Ray started new ones (on node-a and node-c)
    assert len(JobPlacement(cluster, job).actor_nodes("RayTrainWorker")) > 2
    # resumed from a checkpoint, not from step 1: steps after the last one saved repeat, or none do when a
    # checkpoint was registered between the poll above and the kill at exactly the last logged step
    restart = next((i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]), None)
    assert restart is None or steps[restart] >= registered + 1
    final = weights(checkpoints(cfg)[24])
    assert max_difference(final, weights(checkpoints(spread_run["cfg"])[24])) <= 1e-5


def test_a_lost_node_mid_prepare_pretrain_still_gives_byte_identical_shards(cluster, tiny_tokenizer,
                                                                            shared_data, shared_fs,
                                                                            pretrain_blocks):
    """A worker node is SIGKILLed once the stage's Ray Data work has started on it; Ray retries the lost
    tasks and rebuilds the lost objects from their lineage on the nodes left (and a replacement)."""
    out = shared_fs / "pretrain_data_node_lost"
    job = submit(cluster, "prepare-pretrain", pretrain_data_config(tiny_tokenizer, shared_data, out),
                 shared_fs, wait=False)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while job_logs(cluster, job).count("Starting execution of Dataset") < 3:  # past reading, in dedup
        assert time.monotonic() < deadline and job_status(cluster, job) in ("PENDING", "RUNNING"), \
            job_logs(cluster, job)[-3000:]
        time.sleep(0.2)
    [victim] = [node for node in cluster.nodes if node.name == "node-a"]
    victim.kill()
    cluster.add_node("node-d", num_cpus=2, resources={"node_a": 1})
    assert wait_for_job(cluster, job) == "SUCCEEDED", job_logs(cluster, job)[-4000:]
    # the stage's read output, materialized, lay partly in node-a's object store: Ray re-ran those reads
    assert JobPlacement(cluster, job).retried, "the kill cost nothing: no task failed or ran again"
    assert shard_digests(out) == shard_digests(pretrain_blocks["dir"])


def job_status(cluster: RayHead, submission_id: str) -> str:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(cluster.dashboard_url).get_job_status(submission_id).value
