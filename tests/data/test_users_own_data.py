"""The data stages on the shapes users' own files have, with the defaults a user gets.

Each fixture is a tiny file of a shape seen in public datasets (written here, not downloaded).
Stage runs on the session's Ray unless the test is about Ray's size: those run the CLI in a
subprocess with its own Ray (the machine's CPUs, or 1), under a timeout, so a hang fails the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lmforge.config import ConfigError, SFTDataConfig
from lmforge.data.files.sources import list_source_files, survey_source_file
from lmforge.data.stages.prepare_sft import resolve_record_formats, run_prepare_sft
from lmforge.data.stages.source_records import EmptyOutput

STAGE_TIMEOUT_S = 240  # a stage on a few records takes ~20-40 s here; a hang would wait forever


def _jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _sft_config(tokenizer: Path, out: Path, sources: list[dict], **extra) -> SFTDataConfig:
    return SFTDataConfig.model_validate({"tokenizer": str(tokenizer), "output_dir": str(out),
                                         "sources": sources, "max_length": 256, **extra})


def _turns(*texts: str) -> list[dict]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(texts)]


# One record of every SFT schema, and a file of it per schema.
RECORDS = {
    "alpaca": {"instruction": "感冒了怎么办？", "input": "", "output": "多休息，多喝水。"},
    "sharegpt": {"conversations": _turns("头痛怎么办？", "注意休息。")},
    "chatglm3": {"conversations": [{"role": "user", "content": "发热怎么办？"},
                                   {"role": "assistant", "content": "物理降温。"}]},
    "openai": {"messages": [{"role": "user", "content": "咳嗽怎么办？"},
                            {"role": "assistant", "content": "多喝温水。"}]},
    "advertisegen": {"content": "类型#裤*版型#宽松", "summary": "宽松的裤子穿着舒适。"},
    "qa": {"问": "失眠怎么办？", "答": "规律作息。"},
}
MEDICAL_CSV = "department,title,ask,answer\n内科,高血压,高血压要注意什么？,少盐饮食。\n"


@pytest.fixture(scope="module")
def files_of_every_format(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("formats")
    files = {name: _jsonl(root / f"{name}.jsonl", [record]) for name, record in RECORDS.items()}
    files["medical_csv"] = root / "medical.csv"
    files["medical_csv"].write_text(MEDICAL_CSV, encoding="utf-8")
    return files


def _resolve(files: dict[str, Path], formats: dict[str, str]) -> list[str]:
    sources = [{"name": name, "path": str(path), "record_format": formats[name]}
               for name, path in files.items()]
    cfg = SFTDataConfig.model_validate({"tokenizer": "-", "output_dir": "-", "sources": sources})
    listed = list_source_files(cfg.sources)
    resolved = resolve_record_formats(listed, [survey_source_file(f, 1 << 20) for f in listed])
    return [f.source.record_format for f in resolved]


@pytest.mark.usefixtures("ray_local")
def test_record_format_set_on_every_format_fits_its_file(files_of_every_format):
    assert (_resolve(files_of_every_format, {name: name for name in files_of_every_format})
            == list(files_of_every_format))


@pytest.mark.usefixtures("ray_local")
def test_auto_detects_every_format(files_of_every_format):
    assert (_resolve(files_of_every_format, dict.fromkeys(files_of_every_format, "auto"))
            == list(files_of_every_format))


@pytest.mark.parametrize("forced", sorted(set(RECORDS) | {"medical_csv"}))
@pytest.mark.usefixtures("ray_local")
def test_record_format_that_does_not_fit_names_the_file_line_and_field(files_of_every_format, forced):
    other = "alpaca" if forced != "alpaca" else "sharegpt"
    with pytest.raises(ConfigError) as error:
        _resolve({other: files_of_every_format[other]}, {other: forced})
    message = str(error.value)
    assert f"record_format {forced} does not fit {files_of_every_format[other]} line" in message
    assert "field" in message and f"looks like {other}" in message


@pytest.mark.usefixtures("ray_local")
def test_prepare_sft_with_record_format_set_runs(tiny_tokenizer, files_of_every_format, tmp_path):
    manifest = run_prepare_sft(_sft_config(tiny_tokenizer, tmp_path / "out", [
        {"name": "a", "path": str(files_of_every_format["alpaca"]), "record_format": "alpaca"},
        {"name": "q", "path": str(files_of_every_format["qa"]), "record_format": "qa"},
    ]))
    assert manifest.counts["total"]["output_documents"] == 2
    assert [i["record_format"] for i in manifest.inputs] == ["alpaca", "qa"]


@pytest.mark.usefixtures("ray_local")
def test_without_weights_a_tiny_file_is_not_blown_up(tiny_tokenizer, shared_data, tmp_path):
    tiny = _jsonl(tmp_path / "tiny.jsonl",
                  [{"instruction": f"问题{i}是什么？", "output": f"回答{i}。"} for i in range(3)])
    manifest = run_prepare_sft(_sft_config(tiny_tokenizer, tmp_path / "out", [
        {"name": "tiny", "path": str(tiny)},
        {"name": "alpaca", "path": str(shared_data / "sft" / "alpaca_zh_demo.json")},
    ], max_length=1024))
    for row in manifest.counts["sources"].values():
        assert row["mix_factor"] == 1.0
        assert row["output_documents"] == row["kept_documents"] > 0
    assert manifest.counts["warnings"] == []


@pytest.mark.usefixtures("ray_local")
def test_an_output_that_would_be_empty_fails_with_the_counts_and_leaves_no_output_dir(
    tiny_tokenizer, tmp_path
):
    bad = _jsonl(tmp_path / "bad.jsonl",
                 [{"conversations": _turns("只有问题")}, {"conversations": "not a list"}])
    out = tmp_path / "out"
    with pytest.raises(EmptyOutput) as error:
        run_prepare_sft(_sft_config(tiny_tokenizer, out, [{"name": "bad", "path": str(bad)}]))
    message = str(error.value)
    assert "bad: read 2, quarantined 2" in message and f"{bad} line 1: no assistant turn" in message
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["bad.jsonl"]


@pytest.mark.usefixtures("ray_local")
def test_a_failed_rerun_keeps_the_previous_result(tiny_tokenizer, files_of_every_format, tmp_path):
    out = tmp_path / "out"
    run_prepare_sft(
        _sft_config(tiny_tokenizer, out, [{"name": "a", "path": str(files_of_every_format["alpaca"])}])
    )
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(ConfigError):
        run_prepare_sft(_sft_config(tiny_tokenizer, out, [
            {"name": "a", "path": str(files_of_every_format["alpaca"]), "record_format": "openai"}]))
    assert sorted(p.name for p in out.iterdir()) == before and "manifest.json" in before


def test_an_output_dir_holding_other_files_is_refused_before_any_work(
    tiny_tokenizer, files_of_every_format, tmp_path
):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not an lmforge output"):
        run_prepare_sft(
            _sft_config(tiny_tokenizer, tmp_path, [{"path": str(files_of_every_format["alpaca"])}])
        )


# --- dedup keys -----------------------------------------------------------------------------------

LONG_Q = "我最近三天一直头痛，伴有低烧和乏力，晚上睡不好，白天注意力也不集中，请问可能是什么原因？"
TOOLS_A = json.dumps([{"name": "search_drug", "description": "查药品说明书"}], ensure_ascii=False)
TOOLS_B = json.dumps([{"name": "book_doctor", "description": "预约挂号"}], ensure_ascii=False)


@pytest.fixture(scope="module")
def conversations_file(tmp_path_factory) -> Path:
    second = "另外我还有高血压病史，长期服用氨氯地平，这些症状和降压药有关系吗？需要停药吗？"
    other_second = "如果要去医院的话，应该挂哪个科室比较合适？需要提前空腹做检查吗？"
    return _jsonl(tmp_path_factory.mktemp("dialogues") / "dialogues.jsonl", [
        # lines 1-2: the same opening question, then different second questions: both are real data
        {"conversations": _turns(LONG_Q, "可能是感冒或者睡眠不足引起的。",
                                 second, "氨氯地平一般不会引起发热，不要自行停药。")},
        {"conversations": _turns(LONG_Q, "可能是感冒或者睡眠不足引起的。",
                                 other_second, "建议挂内科，抽血需要空腹。")},
        # lines 3-5: one dialogue stored once per round (cumulative history): only the longest stays
        {"conversations": _turns("糖尿病人能吃水果吗？", "可以适量吃低糖水果。")},
        {"conversations": _turns("糖尿病人能吃水果吗？", "可以适量吃低糖水果。",
                                 "哪些水果比较好？", "苹果、柚子、草莓。")},
        {"conversations": _turns("糖尿病人能吃水果吗？", "可以适量吃低糖水果。",
                                 "哪些水果比较好？", "苹果、柚子、草莓。",
                                 "一天吃多少合适？", "每天两百克左右，分两次吃。")},
        # lines 6-7: the same question with different tools and answers: both stay
        {"conversations": _turns("帮我处理一下布洛芬的事情", "好的，我来查说明书。"), "tools": TOOLS_A},
        {"conversations": _turns("帮我处理一下布洛芬的事情", "好的，我帮你预约医生。"), "tools": TOOLS_B},
        # line 8: line 1 asked again with another answer: redundant under the default key
        {"conversations": _turns(LONG_Q, "多喝水。", second, "不要停药。")},
    ])


@pytest.mark.parametrize(("key", "kept", "prefixes"), [
    ("prompt", 5, 2),  # line 8 (line 1 asked again); lines 3, 4 (continued by line 5)
    # lines 2, 8 (line 1's opening), 4, 5 (line 3's) and 7 (line 6's): the old recipe's loss
    ("first_turn", 3, 0),
    ("conversation", 6, 2),  # only the prefixes
])
@pytest.mark.usefixtures("ray_local")
def test_dedup_key_decides_what_counts_as_the_same_sample(tiny_tokenizer, conversations_file, tmp_path,
                                                          key, kept, prefixes):
    manifest = run_prepare_sft(_sft_config(tiny_tokenizer, tmp_path / "out",
                                           [{"name": "d", "path": str(conversations_file)}],
                                           max_length=512, dedup={"key": key}))
    row = manifest.counts["sources"]["d"]
    assert manifest.outputs["dedup_key"] == key
    assert row["read"] == 8 and row["prefix_duplicates"] == prefixes and row["kept_documents"] == kept
    assert row["read"] == row["kept_documents"] + row["exact_duplicates"] + row["near_duplicates"] + prefixes


# --- Ray's size: the defaults a user gets, and one CPU -------------------------------------------------

def _run_stage(stage: str, config: dict, tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    path = tmp_path / f"{stage}.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own Ray, not the session's
    try:
        return subprocess.run([sys.executable, "-m", "lmforge.cli", stage, str(path), *overrides],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=STAGE_TIMEOUT_S,
                              check=False)
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"{stage} {' '.join(overrides)} did not finish in {STAGE_TIMEOUT_S} s (a hang?): "
                    f"{(expired.stderr or b'')[-3000:]!r}")


@pytest.mark.parametrize("cpus", [None, 1], ids=["machine_cpus", "one_cpu"])
def test_prepare_sft_finishes_on_a_small_ray(tiny_tokenizer, shared_data, tmp_path, cpus):
    config = {"tokenizer": str(tiny_tokenizer), "output_dir": str(tmp_path / "out"), "sources": [
        {"path": str(shared_data / "sft" / "cognition_dev.json")},
        {"path": str(shared_data / "sft" / "AdvertiseGen_dev.json")}]}
    result = _run_stage("prepare-sft", config, tmp_path, *([f"ray.num_cpus={cpus}"] if cpus else []))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (json.loads((tmp_path / "out" / "manifest.json").read_text())
            ["counts"]["total"]["output_documents"] > 0)


@pytest.mark.parametrize("cpus", [None, 1], ids=["machine_cpus", "one_cpu"])
def test_prepare_pretrain_finishes_on_a_small_ray(tiny_tokenizer, shared_data, tmp_path, cpus):
    config = {"tokenizer": str(tiny_tokenizer), "output_dir": str(tmp_path / "out"),
              "pack": {"block_size": 256}, "sources": [{"path": str(shared_data / "pretrain" / "fever.txt")}]}
    result = _run_stage("prepare-pretrain", config, tmp_path, *([f"ray.num_cpus={cpus}"] if cpus else []))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["outputs"]["blocks"] > 0


@pytest.mark.usefixtures("ray_local")
def test_a_user_error_raised_in_a_ray_task_prints_as_its_own_message_and_a_bug_keeps_its_traceback():
    import ray
    import ray.data

    from lmforge.cli import user_error_message

    def bad_input(*_):
        raise ValueError("data.json line 3: missing field 'output'")

    with pytest.raises(ValueError) as error:
        ray.get(ray.remote(bad_input).remote())
    assert user_error_message(error.value) == "data.json line 3: missing field 'output'"
    with pytest.raises(Exception) as error:  # Ray Data does not keep the original: shown whole
        ray.data.range(2).map_batches(bad_input).materialize()
    assert user_error_message(error.value) is None
    assert user_error_message(RuntimeError("a bug")) is None


def test_a_bad_record_format_reaches_the_user_as_one_clean_message(
    tiny_tokenizer, files_of_every_format, tmp_path
):
    config = {"tokenizer": str(tiny_tokenizer), "output_dir": str(tmp_path / "out"), "sources": [
        {"name": "ads", "path": str(files_of_every_format["advertisegen"]), "record_format": "alpaca"}]}
    result = _run_stage("prepare-sft", config, tmp_path, "ray.num_cpus=1")
    assert result.returncode == 1
    assert (f"lmforge prepare-sft: sources.ads: record_format alpaca does not fit "
            f"{files_of_every_format['advertisegen']}"
            f" line 1: missing field 'instruction'") in result.stderr
    assert "Traceback" not in result.stderr and "RayTaskError" not in result.stderr
    assert not (tmp_path / "out").exists()


# --- file shapes, end to end ----------------------------------------------------------------------

QUESTIONS = ["高血压患者每天能吃多少盐？", "糖尿病人早餐吃什么好", "孩子夜里咳嗽不停怎么办",
             "胃炎发作时能喝牛奶吗", "偏头痛和颈椎病有关系吗", "贫血的人适合跑步吗",
             "痛风急性期可以喝啤酒吗", "湿疹反复发作要忌口吗", "鼻炎喷雾可以长期用吗",
             "失眠一个月需要吃安眠药吗", "便秘老人每天喝多少水", "结膜炎会传染给家人吗",
             "扁桃体发炎要打针吗"]


# questions distinct enough that MinHash does not call two of them near duplicates
def _alpaca(i: int) -> dict:
    return {"instruction": QUESTIONS[i], "input": "", "output": f"关于这个问题（{i}），请遵医嘱。"}


@pytest.fixture(scope="module")
def sft_shapes(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sft-shapes")
    one_line = [_alpaca(i) for i in range(6)] + [_alpaca(0), _alpaca(3)]  # two copies inside the file
    (root / "one_line.json").write_text(json.dumps(one_line, ensure_ascii=False), encoding="utf-8")
    (root / "objects.json").write_text(
        "".join(json.dumps(_alpaca(10 + i), ensure_ascii=False, indent=2) + "\n" for i in range(3)),
        encoding="utf-8")
    _jsonl(root / "chatglm2.jsonl", [{"prompt": "那要吃药吗？", "response": "遵医嘱服药。",
                                      "history": [["血压有点高怎么办？", "先复查一次。"]]}])
    _jsonl(root / "qa_lines.txt", [{"问": "胃痛吃什么？", "答": "清淡饮食。"},
                                   {"问": "牙疼怎么办？", "答": "看牙医。"}])
    _jsonl(root / "marked.jsonl", [
        {"instruction": "患者：我咳嗽三天了\n医生：有没有发烧？\n患者：没有\n医生：",
         "input": "", "output": "多喝水，观察两天。"}])
    return {path.stem: path for path in root.iterdir()}


@pytest.mark.usefixtures("ray_local")
def test_prepare_sft_reads_every_shape_users_have(tiny_tokenizer, sft_shapes, tmp_path):
    sources = [{"name": name, "path": str(path)} for name, path in sft_shapes.items()]
    sources[[s["name"] for s in sources].index("one_line")]["weight"] = 0.1  # sampled below 1x
    for source in sources:
        source.setdefault("weight", 1.0)
    manifest = run_prepare_sft(_sft_config(tiny_tokenizer, tmp_path / "out", sources))
    rows = manifest.counts["sources"]
    assert {n: rows[n]["read"] for n in rows} == {
        "one_line": 8, "objects": 3, "chatglm2": 1, "qa_lines": 2, "marked": 1}
    assert rows["one_line"]["exact_duplicates"] == 2 and rows["one_line"]["kept_documents"] == 6
    assert rows["one_line"]["mix_factor"] < 1 and manifest.counts["total"]["output_documents"] > 0
    assert all(row["quarantined"] == 0 and row["kept_documents"] > 0 for row in rows.values())
    inputs = {i["source"]: i for i in manifest.inputs}
    assert inputs["objects"]["format"] == "json_objects" and inputs["qa_lines"]["format"] == "jsonl"
    assert inputs["qa_lines"]["record_format"] == "qa" and inputs["chatglm2"]["record_format"] == "chatglm2"


@pytest.mark.usefixtures("ray_local")
def test_prepare_pretrain_keeps_a_question_with_its_answer_and_reads_json_lines_in_txt(
    tiny_tokenizer, tmp_path
):
    from lmforge.config import PretrainDataConfig
    from lmforge.data.stages.prepare_pretrain import run_prepare_pretrain

    blocks = tmp_path / "qa_blocks.txt"
    blocks.write_text("".join(f"问：第{i}种病怎么预防？\n答：第{i}种病要勤洗手、戴口罩、多通风。\n\n\n"
                              for i in range(20)), encoding="utf-8")
    qa_lines = _jsonl(tmp_path / "qa_lines.txt",
                      [{"问": f"第{i}个症状是什么意思？", "答": f"第{i}个症状需要就医。"} for i in range(10)])
    manifest = run_prepare_pretrain(PretrainDataConfig.model_validate({
        "tokenizer": str(tiny_tokenizer), "output_dir": str(tmp_path / "out"), "pack": {"block_size": 64},
        "dedup": {"near": False}, "sources": [{"path": str(blocks)}, {"path": str(qa_lines)}]}))
    rows = manifest.counts["sources"]
    assert rows["qa_blocks"]["read"] == rows["qa_blocks"]["kept_documents"] == 20
    assert (rows["qa_lines"]["read"] == rows["qa_lines"]["kept_documents"] == 10
            and rows["qa_lines"]["quarantined"] == 0)
    inputs = {i["source"]: i for i in manifest.inputs}
    assert inputs["qa_blocks"]["text_unit"] == "paragraph" and inputs["qa_lines"]["format"] == "jsonl"
    assert inputs["qa_lines"].get("detected")
