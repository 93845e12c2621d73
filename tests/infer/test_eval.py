"""lmforge eval: the scorer on fixed log-probabilities, and a real run (Ray Data + vLLM) of two models."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
from checkpoint_helpers import QA

from lmforge.config import (
    EngineConfig,
    EvalConfig,
    MultipleChoiceTaskConfig,
    OpenQATaskConfig,
    PerplexityTaskConfig,
    SourceConfig,
)
from lmforge.infer.eval_tasks import (
    char_f1,
    judge_answers,
    load_questions,
    perplexity_windows,
    score_multiple_choice,
)
from lmforge.infer.evaluate import EvalData
from lmforge.infer.report import render_markdown

QUESTIONS = [{"question": f"q{i}", "A": "a", "B": "b", "C": "c", "D": "d", "answer": answer}
             for i, answer in enumerate("ABCDA")]


def test_the_option_with_the_highest_log_likelihood_is_the_answer():
    # a model biased toward the right letters: -0.1 for the answer, -2 or worse for the others
    loglik = {(i, L): (-0.1 if L == q["answer"] else -2.0 - "ABCD".index(L))
              for i, q in enumerate(QUESTIONS) for L in "ABCD"}
    loglik[(4, "A")] = -5.0  # ... except on the last question, where it prefers B
    generated = {0: "A", 1: "答案是B。", 2: "C", 3: "我不知道", 4: "A"}
    metrics = score_multiple_choice(judge_answers(QUESTIONS, loglik, generated))
    assert metrics["accuracy_loglik"] == 0.8 and metrics["accuracy_generated"] == 0.8
    assert metrics["unparsed_generations"] == 1 and metrics["unscored"] == 0


def test_a_question_with_an_unscored_option_counts_as_wrong():
    loglik = {(0, L): (math.nan if L == "D" else -1.0 + (L == "A")) for L in "ABCD"}
    metrics = score_multiple_choice(judge_answers(QUESTIONS[:1], loglik, {}))
    assert (
        metrics["accuracy_loglik"] == 0.0
        and metrics["unscored"] == 1
        and metrics["unparsed_generations"] == 1
    )


def test_each_question_is_judged_with_its_log_likelihoods_generation_and_gold_answer():
    question = {
        "question": "发热?",
        "A": "是",
        "B": "否",
        "C": "不一定",
        "D": "不知道",
        "answer": "B",
        "id": "q-17",
    }
    loglik = {(0, "A"): -0.5, (0, "B"): -1.25, (0, "C"): -3.0, (0, "D"): math.nan}
    assert judge_answers([question], loglik, {0: "否。"}) == [
        {
            "question_id": "q-17",
            "question": "发热?",
            "answer": "B",
            "loglik": {"A": -0.5, "B": -1.25, "C": -3.0, "D": None},
            "choice_loglik": None,
            "correct_loglik": False,
            "generated": "否。",
            "choice_generated": "B",
            "correct_generated": True,
        }
    ]
    loglik[(0, "D")] = -9.0
    judged = judge_answers([{**question, "answer": "A"}], loglik, {0: "The answer is C"})[0]
    assert (judged["choice_loglik"], judged["correct_loglik"]) == ("A", True)
    assert (judged["choice_generated"], judged["correct_generated"]) == ("C", False)


def test_questions_load_from_csv_with_any_column_case_and_errors_name_the_line(tmp_path):
    (tmp_path / "q.csv").write_text(
        "Question,A,B,C,D,Answer\n发热?,是,否,不一定,不知道,a\n", encoding="utf-8"
    )
    assert load_questions(str(tmp_path / "q.csv")) == [
        {"question": "发热?", "A": "是", "B": "否", "C": "不一定", "D": "不知道", "answer": "A"}]
    (tmp_path / "ids.jsonl").write_text(
        '{"id": 7, "question": "x", "A": 1, "B": 2, "C": 3, "D": 4, "answer": "C"}\n'
    )
    assert load_questions(str(tmp_path / "ids.jsonl"))[0]["id"] == 7
    (tmp_path / "bad.json").write_text('[{"question": "x", "A": 1, "B": 2, "C": 3, "D": 4, "answer": "E"}]')
    with pytest.raises(ValueError, match=r"bad.json:1: Answer 'E' is not one of"):
        load_questions(str(tmp_path / "bad.json"))


def test_every_file_eval_reads_is_listed_with_size_and_checksum(tmp_path, shared_data):
    row = {"Question": "发热?", "A": "是", "B": "否", "C": "不一定", "D": "不知道", "Answer": "A"}
    for name in ("test.json", "dev.json"):
        (tmp_path / name).write_text(json.dumps([row], ensure_ascii=False), encoding="utf-8")
    cfg = EvalConfig(
        models=[str(tmp_path / "model")],
        output_dir=str(tmp_path / "out"),
        perplexity=PerplexityTaskConfig(
            sources=[SourceConfig(path=str(shared_data / "pretrain" / "fever.txt"))]
        ),
        multiple_choice=[
            MultipleChoiceTaskConfig(
                name="t", path=str(tmp_path / "test.json"), dev_path=str(tmp_path / "dev.json")
            )
        ],
        open_qa=OpenQATaskConfig(path=str(shared_data / "eval" / "CMB-test-qa.json")),
    )
    inputs = EvalData.load(cfg).inputs(cfg)
    assert [(i["task"], Path(i["path"]).name) for i in inputs] == [
        ("perplexity", "fever.txt"), ("multiple_choice/t", "test.json"), ("multiple_choice/t", "dev.json"),
        ("open_qa", "CMB-test-qa.json")]
    assert inputs[0]["encoding"] == "utf-8" and inputs[2]["role"] == "dev"
    for record in inputs:
        content = Path(record["path"]).read_bytes()
        assert (record["size"], record["sha256"]) == (len(content), hashlib.sha256(content).hexdigest())


def test_perplexity_windows_end_documents_with_eos_and_drop_single_tokens():
    windows = perplexity_windows(["ab", "abcde"], encode=lambda t: [ord(c) for c in t], eos_id=0, window=3)
    assert windows == [[97, 98, 0], [97, 98, 99], [100, 101, 0]]
    assert perplexity_windows(["abc"], encode=lambda t: [ord(c) for c in t], eos_id=0, window=3) == [
        [97, 98, 99]
    ]


def test_char_f1_counts_shared_characters():
    assert char_f1("多休息", "多休息，多喝水") == pytest.approx(0.6)  # precision 1, recall 3/7
    assert char_f1("", "x") == 0.0


def test_the_markdown_report_has_a_table_per_task_and_a_row_per_model():
    metrics = {
        "perplexity": {"base": {"perplexity": 12.5, "windows": 3}, "sft": {"perplexity": 9.25, "windows": 3}},
        "multiple_choice/cmexam": {"base": {"accuracy_loglik": 0.25}, "sft": {"accuracy_loglik": None}},
    }
    text = render_markdown([{"name": "base", "path": "/m/base"}, {"name": "sft", "path": "/m/sft"}], metrics)
    assert "## Perplexity" in text and "## Multiple choice: cmexam" in text
    assert "| sft | 9.25 | 3 |" in text and "| sft | - |" in text
    assert "`predictions.jsonl`" in text


@pytest.fixture(scope="module")
def eval_run(
    ray_local,  # noqa: ARG001 - starts Ray first
    chat_model_dir, qa_writer_model_dir, shared_data, tmp_path_factory,
):
    from lmforge.infer.evaluate import run_eval

    root = tmp_path_factory.mktemp("eval")
    # Options are the trained answers: scored as continuations of the chat prompt, the chat model's
    # own answer must win (a model biased toward the right options, end to end).
    others = ["今天天气很好。", "传染病学是一门学科。"]
    rows = [
        {"Question": QA[0][0], "A": QA[0][1], "B": QA[1][1], "C": others[0], "D": others[1], "Answer": "A"},
        {"Question": QA[1][0], "A": others[0], "B": QA[1][1], "C": QA[0][1], "D": others[1], "Answer": "B"},
    ]
    (root / "mcq.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    cfg = EvalConfig(
        models=[
            {"name": "chat", "path": str(chat_model_dir)},
            {"name": "writer", "path": str(qa_writer_model_dir)},
        ],
        output_dir=str(root / "out"),
        perplexity=PerplexityTaskConfig(
            sources=[SourceConfig(path=str(shared_data / "pretrain" / "fever.txt"))],
            window=64,
            max_documents=4,
        ),
        multiple_choice=[
            MultipleChoiceTaskConfig(
                name="trained",
                path=str(root / "mcq.json"),
                shots=0,
                chat=True,
                header="",
                question_template="{question}",
                continuation="{text}",
                generate_max_tokens=16,  # room for a whole option text
            )
        ],
        open_qa=OpenQATaskConfig(
            path=str(shared_data / "eval" / "CMB-test-qa.json"),
            max_cases=2,
            max_tokens=16,
            max_description_chars=60,
        ),
        engine=EngineConfig(batch_size=16),
    )
    return run_eval(cfg), root / "out", cfg


def test_multiple_choice_by_log_likelihood_picks_the_options_the_model_was_trained_on(eval_run):
    report = json.loads((eval_run[1] / "report.json").read_text())
    chat = report["tasks"]["multiple_choice/trained"]["chat"]
    assert chat["accuracy_loglik"] == 1.0 and chat["questions"] == 2
    # it answers in words, as trained, not with a letter: an answer is its option's whole text (that option)
    # or something else (unparsed), never another option (predictions.jsonl shows which)
    assert chat["accuracy_generated"] * 2 + chat["unparsed_generations"] == 2


def test_predictions_show_each_models_answer_to_each_question(eval_run):
    manifest, out, _ = eval_run
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert manifest.outputs["predictions"] == "predictions.jsonl"
    assert [(r["model"], r["task"], r["question_id"]) for r in records] == [
        (model, "trained", i) for model in ("chat", "writer") for i in (0, 1)]
    report = json.loads((out / "report.json").read_text())["tasks"]["multiple_choice/trained"]
    for model in ("chat", "writer"):
        mine = [r for r in records if r["model"] == model]
        assert report[model]["accuracy_loglik"] == sum(r["correct_loglik"] for r in mine) / 2
        assert report[model]["unparsed_generations"] == sum(r["choice_generated"] is None for r in mine)
    first = records[0]
    assert first["answer"] == first["choice_loglik"] == max(first["loglik"], key=first["loglik"].get) == "A"
    assert first["errors"] == [] and first["generated"]
    assert {i.get("task") for i in manifest.inputs} >= {"perplexity", "multiple_choice/trained", "open_qa"}


def test_perplexity_equals_exp_of_the_mean_token_loss_computed_with_transformers(eval_run):
    import torch
    import transformers

    from lmforge.data.files.sources import LocalSources

    report = json.loads((eval_run[1] / "report.json").read_text())
    cfg = eval_run[2]
    for model in cfg.models:
        tokenizer = transformers.AutoTokenizer.from_pretrained(model.path)
        hf = transformers.AutoModelForCausalLM.from_pretrained(model.path, dtype=torch.float32).eval()
        texts = list(LocalSources.survey(cfg.perplexity.sources).texts(cfg.perplexity.max_documents))
        encode = tokenizer.backend_tokenizer.encode
        windows = perplexity_windows(texts, lambda t: encode(t, add_special_tokens=False).ids,  # noqa: B023 - called in this iteration
                                     tokenizer.eos_token_id, cfg.perplexity.window)
        total, count = 0.0, 0
        with torch.no_grad():
            for ids in windows:
                ids = torch.tensor([ids])
                loss = hf(input_ids=ids, labels=ids).loss  # mean over the window's tokens after the first
                total, count = total + loss.item() * (ids.shape[1] - 1), count + ids.shape[1] - 1
        measured = report["tasks"]["perplexity"][model.name]
        assert measured["scored_tokens"] == count
        assert measured["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-3)


def test_open_qa_answers_sit_beside_the_question_and_reference_for_every_model(eval_run):
    manifest, out, _ = eval_run
    records = [json.loads(line) for line in (out / "open_qa.jsonl").read_text().splitlines()]
    assert len(records) == manifest.counts["open_qa_questions"] > 2  # two cases, several questions each
    assert set(records[0]) == {"case", "title", "question", "reference", "answers"}
    assert set(records[0]["answers"]) == {"chat", "writer"}
    report = json.loads((out / "report.json").read_text())
    assert report["tasks"]["open_qa"]["chat"]["answered"] == len(records)


def test_the_report_compares_the_models_side_by_side(eval_run):
    text = (eval_run[1] / "report.md").read_text()
    for heading in ("## Perplexity", "## Multiple choice: trained", "## Open QA"):
        assert heading in text
    assert text.count("| chat |") == 4 and text.count("| writer |") == 4  # the model list + three tables
