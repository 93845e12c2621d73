"""`lmforge pipeline`: train-tokenizer -> prepare-pretrain -> prepare-sft
on small copies of the shared samples.

The tokenizer is read by both data stages; prepare-sft does not read prepare-pretrain's output, so a change
that reaches only prepare-pretrain leaves prepare-sft skipped.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lmforge import REPO_DIR as REPO  # the checkout
from lmforge.config import ConfigError, PipelineConfig, load_config
from lmforge.fingerprint import FINGERPRINT_NAME
from lmforge.pipeline import prepare_rerun, resolve_stages, run_pipeline

STAGES = ("train-tokenizer", "prepare-pretrain", "prepare-sft")


def write_workspace(root: Path, shared_data: Path) -> Path:
    """Raw files (the first lines of three samples), the three stage configs
    and pipeline.yaml under `root`."""
    raw = root / "raw"
    raw.mkdir(parents=True)
    for source, lines in (("pretrain/fever.txt", 150), ("pretrain/c4_demo.jsonl", 40),
                          ("sft/medical_sft_1K_format.jsonl", 150)):
        text = (shared_data / source).read_text(encoding="utf-8").splitlines(keepends=True)
        (raw / Path(source).name).write_text("".join(text[:lines]), encoding="utf-8")
    out = root / "out"
    (root / "tokenizer.yaml").write_text(
        f"output_dir: {out / 'tokenizer'}\nvocab_size: 500\nsources:\n  - path: {raw / 'fever.txt'}\n")
    (root / "pretrain_data.yaml").write_text(
        f"tokenizer: {out / 'tokenizer'}\noutput_dir: {out / 'pretrain_data'}\nworkers: 1\n"
        f"pack: {{block_size: 128}}\nsources:\n  - path: {raw / 'fever.txt'}\n"
        f"  - path: {raw / 'c4_demo.jsonl'}\n")
    (root / "sft_data.yaml").write_text(
        f"tokenizer: {out / 'tokenizer'}\noutput_dir: {out / 'sft_data'}\nworkers: 1\nmax_length: 256\n"
        f"sources:\n  - path: {raw / 'medical_sft_1K_format.jsonl'}\n")
    (root / "pipeline.yaml").write_text("stages:\n" + "".join(
        f"  - {{stage: {stage}, config: {root / name}.yaml}}\n"
        for stage, name in zip(STAGES, ("tokenizer", "pretrain_data", "sft_data"), strict=True)))
    return root


@pytest.fixture(scope="module")
def finished(
    ray_local,  # noqa: ARG001 - starts Ray first
    tmp_path_factory,
    shared_data,
) -> tuple[Path, Path, dict[str, str]]:
    """The pipeline run once in a workspace; a copy of that state (mtimes kept); the first run's statuses."""
    root = tmp_path_factory.mktemp("pipeline")
    work = write_workspace(root / "work", shared_data)
    first = run(work)
    shutil.copytree(work, root / "finished")
    return work, root / "finished", first


@pytest.fixture
def workspace(finished) -> Path:
    """The finished workspace, restored for each test at the same path (its configs hold absolute paths)."""
    work, snapshot, _ = finished
    shutil.rmtree(work)
    shutil.copytree(snapshot, work)  # copy2: file mtimes kept, so the restored outputs are up to date
    return work


def run(workspace: Path, *overrides: str) -> dict[str, str]:
    """Run the workspace's pipeline; stage -> ran / skipped."""
    manifest = run_pipeline(load_config(PipelineConfig, workspace / "pipeline.yaml", list(overrides)))
    return {run["stage"]: run["status"] for run in manifest.outputs["stages"]}


def test_a_second_run_skips_every_finished_stage(finished, workspace):
    assert finished[2] == dict.fromkeys(STAGES, "ran")
    stamp = json.loads((workspace / "out" / "sft_data" / FINGERPRINT_NAME).read_text())
    assert str(workspace / "out" / "tokenizer") in stamp["inputs"]  # an upstream output, by its manifest

    assert run(workspace) == dict.fromkeys(STAGES, "skipped")


def test_a_changed_setting_reruns_its_stage_and_the_stages_reading_its_output(workspace):
    # the tokenizer's output is read by both data stages
    assert run(workspace, "stages.0.overrides=[vocab_size=450]") == dict.fromkeys(STAGES, "ran")


def test_a_changed_setting_leaves_stages_that_do_not_read_its_output_skipped(workspace):
    # prepare-sft reads the tokenizer, not prepare-pretrain's blocks
    assert run(workspace, "stages.1.overrides=[pack.block_size=64]") == {
        "train-tokenizer": "skipped", "prepare-pretrain": "ran", "prepare-sft": "skipped"}


def test_a_changed_raw_file_reruns_from_the_first_stage_that_reads_it(workspace):
    # read by prepare-pretrain only
    with (workspace / "raw" / "c4_demo.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps({"text": "One more web page about the harbour ferry timetable, in English."})
                + "\n")
    assert run(workspace) == {
        "train-tokenizer": "skipped", "prepare-pretrain": "ran", "prepare-sft": "skipped"}


def test_a_typo_in_a_later_stage_fails_before_the_first_stage_runs(tmp_path, shared_data):
    workspace = write_workspace(tmp_path, shared_data)
    with pytest.raises(ConfigError, match=r"(?s)stages.2 \(prepare-sft\): .*max_lenght: unknown key"):
        run(workspace, "stages.2.overrides=[max_lenght=128]")
    assert not (workspace / "out").exists()


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("pipeline*.yaml")),
                         ids=lambda path: path.name)
def test_example_pipeline_resolves_every_stage_config(path, monkeypatch):
    monkeypatch.chdir(REPO)  # stage config paths are relative to the working directory, the repo root
    steps = resolve_stages(load_config(PipelineConfig, path))
    assert steps[-1].name == "serve" and steps[-1].config.ask_once


def test_a_finished_training_run_is_moved_aside_before_a_rerun_instead_of_resumed(tmp_path):
    run_dir = tmp_path / "train" / "demo-pretrain"
    run_dir.mkdir(parents=True)
    (run_dir / "manifest.json").write_text("{}")
    (run_dir / FINGERPRINT_NAME).write_text("{}")
    prepare_rerun(run_dir, resumes=True)
    assert not run_dir.exists()
    [aside] = (tmp_path / "train").iterdir()
    assert aside.name.startswith("demo-pretrain.replaced-") and (aside / "manifest.json").is_file()


def test_an_unfinished_training_run_stays_to_be_resumed(tmp_path):
    run_dir = tmp_path / "demo-pretrain"
    (run_dir / "checkpoint_000000").mkdir(parents=True)  # no manifest.json: interrupted
    prepare_rerun(run_dir, resumes=True)
    assert (run_dir / "checkpoint_000000").is_dir()
