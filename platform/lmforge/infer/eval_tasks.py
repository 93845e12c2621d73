"""The evaluation tasks: each turns its data into engine requests, and the engine's results into metrics.

    perplexity        documents + EOS, cut into windows of `window` tokens; every token but a window's
                      first is scored: ppl = exp(-sum log p / scored tokens)
    multiple choice   a few-shot prompt per question; (1) each option's continuation ('{letter}') scored by
                      log-likelihood, the best is the answer; (2) a short generation, the option parsed from
                      it (parsers.parse_choice); per question a record of both (evaluate: predictions.jsonl)
    open QA           a case description and a question -> an answer, saved beside the reference

Request ids say which task, item and option a result belongs to: "ppl:3:0", "mcq:cmexam:12:B",
"mcq:cmexam:12:gen", "qa:4:1".
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

from lmforge.config.infer import MultipleChoiceTaskConfig, OpenQATaskConfig, PerplexityTaskConfig
from lmforge.data.files.records import read_chunk
from lmforge.data.files.survey import survey_file
from lmforge.infer.parsers import parse_choice

LETTERS = ("A", "B", "C", "D")
Encode = Callable[[str], list[int]]


# --- perplexity ---------------------------------------------------------------------------------

def perplexity_windows(texts: list[str], encode: Encode, eos_id: int, window: int) -> list[list[int]]:
    """Each document's tokens and EOS, cut into windows of at most `window` tokens (at least 2)."""
    windows = []
    for text in texts:
        ids = encode(text) + [eos_id]
        windows += [ids[i:i + window] for i in range(0, len(ids), window) if len(ids[i:i + window]) >= 2]
    return windows


def perplexity_requests(
    task: PerplexityTaskConfig, texts: list[str], encode: Encode, eos_id: int
) -> list[dict]:
    return [{"id": f"ppl:{i}", "prompt_ids": ids, "max_tokens": 1, "score_from": 1}
            for i, ids in enumerate(perplexity_windows(texts, encode, eos_id, task.window))]


def perplexity_metrics(requests: list[dict], results: dict[str, dict]) -> dict:
    scored = [(r, results[r["id"]]) for r in requests if r["id"].startswith("ppl:")]
    ok = [(r, res) for r, res in scored if not res["error"]]
    tokens = sum(len(r["prompt_ids"]) - 1 for r, _ in ok)
    nll = -sum(res["logprob"] for _, res in ok)
    return {"perplexity": round(math.exp(nll / tokens), 4) if tokens else None,
            "nll_per_token": round(nll / tokens, 6) if tokens else None,
            "scored_tokens": tokens, "windows": len(ok), "failed_windows": len(scored) - len(ok)}


# --- multiple choice -----------------------------------------------------------------------------

def load_questions(path: str, limit: int | None = None) -> list[dict]:
    """Rows with question, A, B, C, D, answer, and id if the file has one (column names in any case);
    ValueError names file and line."""
    survey = survey_file(path, None)
    questions = []
    for chunk in survey.chunks:
        for record in read_chunk(chunk):
            if record.error:
                raise ValueError(f"{path}:{record.line}: {record.error}")
            fields = {str(k).strip().lower(): v for k, v in record.fields.items()}
            missing = [c for c in ("question", "a", "b", "c", "d", "answer") if c not in fields]
            if missing:
                raise ValueError(
                    f"{path}:{record.line}: missing column(s) {missing}; need Question, A, B, C, D, Answer"
                )
            answer = str(fields["answer"]).strip().upper()[:1]
            if answer not in LETTERS:
                raise ValueError(
                    f"{path}:{record.line}: Answer {fields['answer']!r} is not one of A, B, C, D"
                )
            questions.append({"question": str(fields["question"]).strip(), "answer": answer,
                              **{letter: str(fields[letter.lower()]).strip() for letter in LETTERS},
                              **({"id": fields["id"]} if "id" in fields else {})})
            if limit is not None and len(questions) >= limit:
                return questions
    return questions


def mcq_prompt(task: MultipleChoiceTaskConfig, question: dict, shots: list[dict]) -> str:
    body = "".join(task.question_template.format(**shot) + shot["answer"] + "\n\n" for shot in shots)
    return task.header.format(subject=task.subject) + body + task.question_template.format(**question)


def mcq_requests(task: MultipleChoiceTaskConfig, questions: list[dict], dev: list[dict], encode: Encode,
                 encode_chat: Encode, max_len: int) -> list[dict]:
    """Per question: four scored continuations and one short generation, with as many shots as fit."""
    requests = []
    for q_index, question in enumerate(questions):
        continuations = [encode(task.continuation.format(letter=L, text=question[L])) for L in LETTERS]
        longest = max(len(c) for c in continuations) + task.generate_max_tokens
        for shots in range(min(task.shots, len(dev)), -1, -1):  # drop shots until the prompt fits
            prompt = mcq_prompt(task, question, dev[:shots])
            context = encode_chat(prompt) if task.chat else encode(prompt)
            if len(context) + longest < max_len:
                break
        base = f"mcq:{task.name}:{q_index}"
        requests += [
            {"id": f"{base}:{L}", "prompt_ids": context + cont, "max_tokens": 1, "score_from": len(context)}
            for L, cont in zip(LETTERS, continuations, strict=True)
        ]
        requests.append({"id": f"{base}:gen", "prompt_ids": context, "max_tokens": task.generate_max_tokens,
                         "score_from": -1})
    return requests


def judge_answers(
    questions: list[dict], loglik: dict[tuple[int, str], float], generated: dict[int, str]
) -> list[dict]:
    """One record per question: how each method answered it and whether that was right.

    `loglik[(question index, letter)]` (NaN: not scored), `generated[question index]` the generated text.
    By log-likelihood the best option wins (ties: the first; none when an option is unscored); by
    generation, the option parse_choice finds in the text (none when it finds none)."""
    judged = []
    for i, question in enumerate(questions):
        scores = {L: loglik.get((i, L), math.nan) for L in LETTERS}
        by_loglik = (
            None if any(math.isnan(v) for v in scores.values()) else max(LETTERS, key=scores.__getitem__)
        )
        text = generated.get(i, "")
        by_generation = parse_choice(text, {L: question[L] for L in LETTERS})
        judged.append(
            {
                "question_id": question.get("id", i),
                "question": question["question"],
                "answer": question["answer"],
                "loglik": {L: None if math.isnan(v) else round(v, 6) for L, v in scores.items()},
                "choice_loglik": by_loglik,
                "correct_loglik": by_loglik == question["answer"],
                "generated": text,
                "choice_generated": by_generation,
                "correct_generated": by_generation == question["answer"],
            }
        )
    return judged


def score_multiple_choice(judged: list[dict]) -> dict:
    """Accuracy of both methods over judge_answers' records, and how many questions each could not answer."""
    n = len(judged)
    return {"questions": n,
            "accuracy_loglik": round(sum(j["correct_loglik"] for j in judged) / n, 4) if n else None,
            "accuracy_generated": round(sum(j["correct_generated"] for j in judged) / n, 4) if n else None,
            "unscored": sum(j["choice_loglik"] is None for j in judged),
            "unparsed_generations": sum(j["choice_generated"] is None for j in judged)}


def judge_multiple_choice(
    task: MultipleChoiceTaskConfig, questions: list[dict], results: dict[str, dict]
) -> list[dict]:
    """judge_answers on the engine's results, each record with the errors of its requests (normally none)."""
    base = f"mcq:{task.name}"
    loglik = {
        (i, L): (math.nan if results[f"{base}:{i}:{L}"]["error"] else results[f"{base}:{i}:{L}"]["logprob"])
        for i in range(len(questions))
        for L in LETTERS
    }
    generated = {i: results[f"{base}:{i}:gen"]["text"] for i in range(len(questions))}
    judged = judge_answers(questions, loglik, generated)
    for i, record in enumerate(judged):
        record["errors"] = [
            e for e in (results[f"{base}:{i}:{part}"]["error"] for part in (*LETTERS, "gen")) if e
        ]
    return judged


# --- open QA -------------------------------------------------------------------------------------

def load_cases(task: OpenQATaskConfig) -> list[dict]:
    """(case, question, reference) items of a CMB-Clin style file, in file order."""
    cases = json.loads(Path(task.path).read_text(encoding="utf-8-sig"))
    if not isinstance(cases, list):
        raise ValueError(f"{task.path}: expected a JSON array of cases with QA_pairs")  # noqa: TRY004 (bad data)
    items = []
    for number, case in enumerate(cases[:task.max_cases] if task.max_cases else cases):
        if not isinstance(case, dict) or not isinstance(case.get("QA_pairs"), list):
            raise ValueError(f"{task.path}: case {number} has no QA_pairs list")  # noqa: TRY004 (bad data)
        for k, pair in enumerate(case["QA_pairs"]):
            items.append({"case": str(case.get("id", number)), "title": case.get("title", ""), "pair": k,
                          "description": str(case.get("description", ""))[:task.max_description_chars],
                          "question": pair["question"], "reference": pair["answer"]})
    return items


def open_qa_requests(task: OpenQATaskConfig, items: list[dict], encode_chat: Encode) -> list[dict]:
    return [
        {
            "id": f"qa:{i}",
            "max_tokens": task.max_tokens,
            "score_from": -1,
            "prompt_ids": encode_chat(
                task.prompt.format(
                    title=item["title"], description=item["description"], question=item["question"]
                )
            ),
        }
        for i, item in enumerate(items)
    ]


def open_qa_metrics(items: list[dict], results: dict[str, dict]) -> dict:
    answers = [results[f"qa:{i}"] for i in range(len(items))]
    ok = [a for a in answers if not a["error"]]
    f1 = [
        char_f1(a["text"], item["reference"])
        for a, item in zip(answers, items, strict=True)
        if not a["error"]
    ]
    return {
        "questions": len(items),
        "answered": len(ok),
        "mean_answer_chars": round(sum(len(a["text"]) for a in ok) / len(ok), 1) if ok else None,
        "truncated_share": round(sum(a["finish_reason"] == "length" for a in ok) / len(ok), 4)
        if ok
        else None,
        "char_f1_vs_reference": round(sum(f1) / len(f1), 4) if f1 else None,
    }


def char_f1(answer: str, reference: str) -> float:
    """F1 of the characters two texts share (as multisets, whitespace ignored):
    a rough overlap signal only."""
    a = [c for c in answer if not c.isspace()]
    r = [c for c in reference if not c.isspace()]
    if not a or not r:
        return 0.0
    counts: dict[str, int] = {}
    for c in r:
        counts[c] = counts.get(c, 0) + 1
    common = 0
    for c in a:
        if counts.get(c, 0) > 0:
            counts[c] -= 1
            common += 1
    if not common:
        return 0.0
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall)
