"""`lmforge synth`: data written by a model: SFT conversations in ShareGPT JSONL that prepare-sft reads as
is, or preference pairs in pairwise_qa JSONL that prepare-preference reads.

    read inputs (bad records to quarantine) -> items: passages | questions | QA pairs
      -> the item's requests: a prompt from the recipe's template (config `prompts:`) for model_dir
         (preference: also the bare question for policy_model_dir), one request list per model
      -> vLLM engine actors (ray.data.llm) -> parse the answers (lmforge.infer.parsers)
      -> sft.jsonl | preference.jsonl; unusable answers to quarantine.jsonl
      -> generations.jsonl (every prompt and answer, with its model, for review) + manifest.json

Recipes (the first three from the original project's data scripts; preference closes its refusal step
into a loop with the model being aligned):
    qa_from_passages  textbook text split into passages; "根据下面的内容提出1-2个中文医学问题,并利用文本内容
                      回答这几个问题..."; each parsed question/answer pair is a conversation whose
                      provenance names the passage it came from
    polite_refusal    off-topic questions; "请扮演医疗人工智能助手,并委婉的拒绝回答下面的问题:"; the
                      question and the refusal are a conversation
    multi_turn        a QA pair (any SFT schema); the model continues it as 患者:/医生: lines; the pair
                      and the parsed turns are a conversation
    preference        {question, chosen, rejected, system?, provenance} records, two branches (per
                      record, or one for all: config `preference_from`):
                      refusals    an off-topic question: chosen = model_dir's refusal (polite_refusal's
                                  prompt), rejected = policy_model_dir's own answer to the bare question;
                                  an answer that already refuses (parsers.refusal_marker) or is the refusal
                                  is no rejected side: quarantined as policy_refused
                      references  a QA record in any SFT schema (its first exchange, as multi_turn reads
                                  it): chosen = its answer, rejected = the policy's answer to its question
                                  (and system prompt); an answer equal to the reference as exact dedup
                                  sees it (normalize_for_dedup) is counted as same_as_reference, not kept

Counts reconcile: read = quarantined on read + ok records; the candidates made from ok records
(passages, questions, pairs) = short passages skipped + beyond max_items + items; items = kept +
unparsed + failed + policy_refused + same_as_reference, and every unparsed, failed or policy_refused
item is in quarantine.jsonl with its reason.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterator
from functools import partial
from pathlib import Path

from lmforge.config.infer import SynthConfig
from lmforge.data.files.sources import list_source_files, plan_chunks, read_records, survey_source_file
from lmforge.data.steps.minhash import normalize_for_dedup
from lmforge.data.text.sft_formats import detect_record_format, to_conversation
from lmforge.data.text.templates import RecordError, render_text
from lmforge.infer.engine import model_limits, run_request_list
from lmforge.infer.parsers import Unparsed, parse_dialogue, parse_qa_pairs, refusal_marker
from lmforge.infer.prompts import PromptTokenizer
from lmforge.manifest import Manifest
from lmforge.runtime import init_ray
from lmforge.stage_outputs import SynthData

_SENTENCE_END = re.compile(r"(?<=[。！？!?；;])")
_ROLE_NAMES = {"user": "human", "assistant": "gpt"}


class PolicyRefused(ValueError):
    """preference: the policy model's direct answer already refuses, so it is no rejected side."""


class SameAsReference(Exception):
    """preference: the policy model's answer is the reference answer: nothing to prefer (counted only)."""


def run_synth(cfg: SynthConfig) -> Manifest:
    files = list_source_files(cfg.sources)
    for model_dir in {cfg.model_dir, cfg.policy_model_dir or cfg.model_dir}:
        model_limits(model_dir, cfg.engine)  # a missing model stops us before any work
    out = Path(cfg.output_dir)
    if out.exists():
        shutil.rmtree(out)  # a synth run is cheap to redo; stale records must never mix in
    out.mkdir(parents=True)
    counts: Counter = Counter()
    quarantine: list[dict] = []
    items = list(read_items(cfg, files, counts, quarantine))
    planned = {item["id"]: item_requests(cfg, item) for item in items}
    init_ray(cfg.ray)
    results = generate(cfg, planned)
    records, generations = [], []
    for item in items:
        answers = {side: results[f"{item['id']}#{side}"] for side in planned[item["id"]]}
        generations += [{"id": item["id"], "side": side, "model_dir": str(Path(model_dir).resolve()),
                         "prompt": messages[-1]["content"], "text": answers[side]["text"],
                         "finish_reason": answers[side]["finish_reason"],
                         "error": answers[side]["error"] or None}
                        for side, (model_dir, messages) in planned[item["id"]].items()]
        records += records_of(cfg, item, answers, counts, quarantine)
    counts["items"] = len(items)
    if cfg.recipe == "preference":
        counts["items_by_branch"] = dict(Counter(item["branch"] for item in items))
    output, record_format = (("preference", "pairwise_qa") if cfg.recipe == "preference"
                             else ("sft", "sharegpt"))
    counts[f"{output}_records"] = len(records)
    _reconcile(counts)
    _write_jsonl(out / f"{output}.jsonl", records)
    _write_jsonl(out / "generations.jsonl", generations)
    _write_jsonl(out / "quarantine.jsonl", quarantine)
    source = {"path": str((out / f"{output}.jsonl").resolve()), "record_format": record_format}
    manifest = Manifest(
        stage="synth", config=cfg.model_dump(),
        inputs=[{"source": f.source.name, "path": str(Path(f.path).resolve())} for f in files]
        + [{"model_dir": str(Path(cfg.model_dir).resolve())}]
        + ([{"policy_model_dir": str(Path(cfg.policy_model_dir).resolve())}] if cfg.policy_model_dir else []),
        outputs=SynthData(  # sft + prepare_sft_source, or preference + prepare_preference_source
            dir=str(out.resolve()), record_format=record_format, generations="generations.jsonl",
            quarantine="quarantine.jsonl", **{output: f"{output}.jsonl", f"prepare_{output}_source": source},
        ).model_dump(),
        counts=dict(counts),
    )
    manifest.write(out)
    return manifest


def generate(cfg: SynthConfig, planned: dict[str, dict[str, tuple[str, list[dict]]]]) -> dict[str, dict]:
    """Engine results by request id '<item id>#<side>': one request list, so one engine, per model
    directory (the policy model and model_dir share it when they are the same directory)."""
    tokenizers: dict[str, PromptTokenizer] = {}
    by_model: dict[str, list[dict]] = defaultdict(list)
    for item_id, sides in planned.items():
        for side, (model_dir, messages) in sides.items():
            model_dir = str(Path(model_dir).resolve())
            if model_dir not in tokenizers:
                tokenizers[model_dir] = PromptTokenizer(model_dir)
            by_model[model_dir].append({"id": f"{item_id}#{side}", "max_tokens": cfg.sampling.max_tokens,
                                        "prompt_ids": tokenizers[model_dir].encode_messages(messages),
                                        "score_from": -1})
    results: dict[str, dict] = {}
    for model_dir, requests in by_model.items():
        results |= run_request_list(requests, model_dir, cfg.engine, cfg.sampling)
    return results


def records_of(cfg: SynthConfig, item: dict, answers: dict[str, dict], counts: Counter,
               quarantine: list[dict]) -> list[dict]:
    """The item's records from its answers by side; an item without any is counted (and quarantined,
    but for same_as_reference) with its reason."""
    try:
        records = ([preference_pair(cfg, item, answers)] if cfg.recipe == "preference"
                   else conversations_from(cfg, item, answers["answer"]))
    except SameAsReference:
        counts["same_as_reference_items"] += 1
        return []
    except (Unparsed, ValueError) as exc:
        kind = ("policy_refused" if isinstance(exc, PolicyRefused)
                else "failed" if any(a["error"] for a in answers.values()) else "unparsed")
        counts[f"{kind}_items"] += 1
        raw = {side: a["text"][:1000] for side, a in answers.items()}
        quarantine.append({"id": item["id"], "stage": kind, "reason": str(exc),
                           "provenance": item["provenance"],
                           "raw": raw.get("answer", raw)})  # the text; preference: the texts by side
        return []
    counts["kept_items"] += 1
    return records


def read_items(cfg: SynthConfig, files: list, counts: Counter, quarantine: list[dict]) -> Iterator[dict]:
    """Items of the recipe, in input order: {id, passage | question (+ answer, system, branch),
    provenance}."""
    surveys = [survey_source_file(f, 64 * 1024**2) for f in files]
    for file, survey in zip(files, surveys, strict=True):
        if isinstance(survey, str):
            counts["read"] += 1
            counts["quarantined_on_read"] += 1
            quarantine.append({"id": None, "stage": "read", "reason": survey,
                               "provenance": {"file": file.path}})
    convert = render_text
    if cfg.recipe == "multi_turn":
        convert = _read_exchange
    elif cfg.recipe == "preference":
        convert = partial(_read_preference_input, preference_from=cfg.preference_from)
    emitted = 0
    for planned in plan_chunks(files, surveys):
        for row in read_records(planned, convert=convert):
            counts["read"] += 1
            where = {"source": row["source"], "file": files[planned.file_index].path, "line": row["line"]}
            if row["status"] != "ok":
                counts["quarantined_on_read"] += 1
                quarantine.append({"id": None, "stage": "read", "reason": row["reason"], "provenance": where,
                                   "raw": row["raw"]})
                continue
            counts["ok_records"] += 1
            for item in _items_of(cfg, row["text"], f"{row['source']}:{row['line']}", where, counts):
                counts["candidates"] += 1
                if cfg.max_items is not None and emitted >= cfg.max_items:
                    counts["beyond_max_items"] += 1
                    continue
                emitted += 1
                yield item


def _items_of(cfg: SynthConfig, text: str, base_id: str, where: dict, counts: Counter) -> Iterator[dict]:
    if cfg.recipe == "polite_refusal":
        yield {"id": base_id, "question": text.strip(), "provenance": where}
    elif cfg.recipe in ("multi_turn", "preference"):
        yield {"id": base_id, **json.loads(text), "provenance": where}
    else:
        passages = split_passages(text, cfg.passage_chars)
        for k, passage in enumerate(passages):
            if len(passage) < cfg.min_passage_chars:
                counts["candidates"] += 1
                counts["skipped_short_passages"] += 1
                continue
            passage_id = f"{base_id}:{k}"
            yield {"id": passage_id, "passage": passage, "provenance": where | {"passage_id": passage_id}}


def _read_exchange(fields: dict, source) -> str:
    """A record in any SFT schema -> its first exchange, as JSON {question, answer, system}."""
    return json.dumps(_first_exchange(fields, source), ensure_ascii=False)


def _read_preference_input(fields: dict, source, preference_from: str) -> str:
    """A record -> JSON {branch, question, answer?, system?}: with preference_from both, an SFT record is a
    reference pair and anything else (a line of text, a record with only a question) a question to refuse."""
    if preference_from == "references" or (preference_from == "both" and detect_record_format(fields)):
        return json.dumps({"branch": "references", **_first_exchange(fields, source)}, ensure_ascii=False)
    question = render_text(fields, source).strip()
    if not question:
        raise RecordError("empty question")
    return json.dumps({"branch": "refusals", "question": question}, ensure_ascii=False)


def _first_exchange(fields: dict, source) -> dict:
    record_format = detect_record_format(fields)
    if record_format is None:
        raise RecordError(f"not an SFT record (keys {sorted(fields)[:8]})")
    conversation = to_conversation(fields, record_format, source.fields)
    turns = conversation.turns
    if len(turns) < 2 or (turns[0].role, turns[1].role) != ("user", "assistant"):
        raise RecordError("the conversation does not open with a user turn and its answer")
    return {"question": turns[0].content, "answer": turns[1].content, "system": conversation.system}


def split_passages(text: str, max_chars: int) -> list[str]:
    """Whole sentences packed into passages of at most max_chars (a longer sentence is cut)."""
    passages, current = [], ""
    for sentence in (s.strip() for s in _SENTENCE_END.split(text)):
        while len(sentence) > max_chars:
            passages += [current] if current else []
            passages.append(sentence[:max_chars])
            current, sentence = "", sentence[max_chars:]
        if current and len(current) + len(sentence) > max_chars:
            passages.append(current)
            current = ""
        current += sentence
    return passages + ([current] if current else [])


def recipe_prompt(cfg: SynthConfig, item: dict) -> str:
    if cfg.recipe == "qa_from_passages":
        return cfg.prompts.qa_from_passages.replace("{passage}", item["passage"])
    template = cfg.prompts.polite_refusal if cfg.recipe == "preference" else getattr(cfg.prompts, cfg.recipe)
    return template.replace("{question}", item["question"]).replace("{answer}", item.get("answer", ""))


def item_requests(cfg: SynthConfig, item: dict) -> dict[str, tuple[str, list[dict]]]:
    """What each of the item's answers is asked of which model: side -> (model_dir, chat messages).
    preference: chosen (refusals only: model_dir's refusal) and rejected (the policy's own answer);
    the other recipes: one answer to the recipe's prompt."""
    if cfg.recipe != "preference":
        return {"answer": (cfg.model_dir, [{"role": "user", "content": recipe_prompt(cfg, item)}])}
    system = [{"role": "system", "content": item["system"]}] if item.get("system") else []
    sides = {"rejected": (cfg.policy_model_dir, system + [{"role": "user", "content": item["question"]}])}
    if item["branch"] == "refusals":
        sides = {"chosen": (cfg.model_dir, [{"role": "user", "content": recipe_prompt(cfg, item)}])} | sides
    return sides


def generated_text(cfg: SynthConfig, result: dict) -> str:
    """The stripped text of a usable generation; ValueError (engine error) or Unparsed (cut, empty)."""
    if result["error"]:
        raise ValueError(result["error"])
    if result["finish_reason"] == "length" and not cfg.keep_truncated:
        raise Unparsed(f"truncated: the answer reached max_tokens={cfg.sampling.max_tokens}")
    text = result["text"].strip()
    if not text:
        raise Unparsed("empty answer")
    return text


def conversations_from(cfg: SynthConfig, item: dict, result: dict) -> list[dict]:
    """ShareGPT records made from one generation; Unparsed / ValueError says why there are none."""
    text = generated_text(cfg, result)
    provenance = item["provenance"] | {"recipe": cfg.recipe, "model_dir": str(Path(cfg.model_dir).resolve())}
    if cfg.recipe == "qa_from_passages":
        pairs = parse_qa_pairs(text)
        return [_sharegpt(f"{item['id']}#{k}", [("user", q), ("assistant", a)], provenance)
                for k, (q, a) in enumerate(pairs, 1)]
    if cfg.recipe == "polite_refusal":
        return [_sharegpt(item["id"], [("user", item["question"]), ("assistant", text)], provenance)]
    opening = [("user", item["question"]), ("assistant", item["answer"])]
    turns = parse_dialogue(text)
    if turns[:2] == opening:  # the model repeated the pair it was given
        turns = turns[2:]
    if not turns:
        raise Unparsed("the dialogue only repeats the given pair")
    return [_sharegpt(item["id"], opening + turns, provenance)]


def preference_pair(cfg: SynthConfig, item: dict, answers: dict[str, dict]) -> dict:
    """The pairwise_qa record of a preference item from its answers by side; ValueError, Unparsed,
    PolicyRefused or SameAsReference says why there is none."""
    for side, result in answers.items():  # an engine error first: the item counts as failed
        if result["error"]:
            raise ValueError(f"{side}: {result['error']}")
    texts = {}
    for side, result in answers.items():
        try:
            texts[side] = generated_text(cfg, result)
        except Unparsed as exc:
            raise Unparsed(f"{side}: {exc}") from None
    rejected = texts["rejected"]
    if item["branch"] == "refusals":
        chosen, marker = texts["chosen"], refusal_marker(rejected)
        if marker:
            raise PolicyRefused(f"the policy model's direct answer already refuses ('{marker}')")
        if normalize_for_dedup(rejected) == normalize_for_dedup(chosen):
            raise PolicyRefused("the policy model's direct answer is the refusal itself")
    else:
        chosen = item["answer"]
        if normalize_for_dedup(rejected) == normalize_for_dedup(chosen):
            raise SameAsReference
    provenance = item["provenance"] | {
        "recipe": cfg.recipe, "branch": item["branch"],
        "chosen_model_dir": str(Path(cfg.model_dir).resolve()) if "chosen" in texts else None,
        "rejected_model_dir": str(Path(cfg.policy_model_dir).resolve()),
    }
    system = {"system": item["system"]} if item.get("system") else {}
    return {"id": item["id"], "question": item["question"], **system, "chosen": chosen, "rejected": rejected,
            "provenance": provenance}


def _sharegpt(record_id: str, turns: list[tuple[str, str]], provenance: dict) -> dict:
    return {"id": record_id, "conversations": [{"from": _ROLE_NAMES[r], "value": c} for r, c in turns],
            "provenance": provenance}


def _reconcile(counts: Counter) -> None:
    read = counts["quarantined_on_read"] + counts["ok_records"]
    candidates = counts["skipped_short_passages"] + counts["beyond_max_items"] + counts["items"]
    items = sum(counts[f"{outcome}_items"]
                for outcome in ("kept", "unparsed", "failed", "policy_refused", "same_as_reference"))
    if read != counts["read"] or candidates != counts["candidates"] or items != counts["items"]:
        raise RuntimeError(f"synth: counts do not reconcile: {dict(counts)}")


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
