"""`lmforge synth`: SFT conversations written by a model, in ShareGPT JSONL that prepare-sft reads as is.

    read inputs (bad records to quarantine) -> items: passages | questions | QA pairs
      -> prompt from the recipe's template (config `prompts:`) -> vLLM engine actors (ray.data.llm)
      -> parse the answer (lmforge.infer.parsers) -> sft.jsonl; unparsed answers to quarantine.jsonl
      -> generations.jsonl (every prompt and answer, for review) + manifest.json

Recipes (from the original project's data scripts):
    qa_from_passages  textbook text split into passages; "根据下面的内容提出1-2个中文医学问题,并利用文本内容
                      回答这几个问题..."; each parsed question/answer pair is a conversation whose
                      provenance names the passage it came from
    polite_refusal    off-topic questions; "请扮演医疗人工智能助手,并委婉的拒绝回答下面的问题:"; the
                      question and the refusal are a conversation
    multi_turn        a QA pair (any SFT schema); the model continues it as 患者:/医生: lines; the pair
                      and the parsed turns are a conversation

Counts reconcile: read = quarantined on read + ok records; the candidates made from ok records
(passages, questions, pairs) = short passages skipped + beyond max_items + items; items = kept +
unparsed + failed, and every unparsed or failed item is in quarantine.jsonl with its reason.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from lmforge.config.infer import SynthConfig
from lmforge.data.files.sources import list_source_files, plan_chunks, read_records, survey_source_file
from lmforge.data.text.sft_formats import detect_record_format, to_conversation
from lmforge.data.text.templates import RecordError, render_text
from lmforge.infer.engine import model_limits, run_request_list
from lmforge.infer.parsers import Unparsed, parse_dialogue, parse_qa_pairs
from lmforge.infer.prompts import PromptTokenizer
from lmforge.manifest import Manifest
from lmforge.runtime import init_ray
from lmforge.stage_outputs import SynthData

_SENTENCE_END = re.compile(r"(?<=[。！？!?；;])")
_ROLE_NAMES = {"user": "human", "assistant": "gpt"}


def run_synth(cfg: SynthConfig) -> Manifest:
    files = list_source_files(cfg.sources)
    model_limits(cfg.model_dir, cfg.engine)  # a missing model stops us before any work
    out = Path(cfg.output_dir)
    if out.exists():
        shutil.rmtree(out)  # a synth run is cheap to redo; stale records must never mix in
    out.mkdir(parents=True)
    counts: Counter = Counter()
    quarantine: list[dict] = []
    items = list(read_items(cfg, files, counts, quarantine))
    tokenizer = PromptTokenizer(cfg.model_dir)
    requests = [{"id": item["id"], "prompt_ids": tokenizer.encode_messages([{"role": "user", "content": p}]),
                 "max_tokens": cfg.sampling.max_tokens, "score_from": -1}
                for item, p in ((item, recipe_prompt(cfg, item)) for item in items)]
    init_ray(cfg.ray)
    results = run_request_list(requests, cfg.model_dir, cfg.engine, cfg.sampling)

    records, generations = [], []
    for item in items:
        result = results[item["id"]]
        generations.append({"id": item["id"], "prompt": recipe_prompt(cfg, item), "text": result["text"],
                            "finish_reason": result["finish_reason"], "error": result["error"] or None})
        try:
            records += conversations_from(cfg, item, result)
            counts["kept_items"] += 1
        except (Unparsed, ValueError) as exc:
            kind = "failed" if result["error"] else "unparsed"
            counts[f"{kind}_items"] += 1
            quarantine.append({"id": item["id"], "stage": kind, "reason": str(exc),
                               "provenance": item["provenance"], "raw": result["text"][:1000]})
    counts["items"] = len(items)
    counts["sft_records"] = len(records)
    _reconcile(counts)
    _write_jsonl(out / "sft.jsonl", records)
    _write_jsonl(out / "generations.jsonl", generations)
    _write_jsonl(out / "quarantine.jsonl", quarantine)
    manifest = Manifest(
        stage="synth", config=cfg.model_dump(),
        inputs=[{"source": f.source.name, "path": str(Path(f.path).resolve())} for f in files]
        + [{"model_dir": str(Path(cfg.model_dir).resolve())}],
        outputs=SynthData(
            dir=str(out.resolve()), sft="sft.jsonl", record_format="sharegpt",
            generations="generations.jsonl", quarantine="quarantine.jsonl",
            prepare_sft_source={"path": str((out / "sft.jsonl").resolve()), "record_format": "sharegpt"},
        ).model_dump(),
        counts=dict(counts),
    )
    manifest.write(out)
    return manifest


def read_items(cfg: SynthConfig, files: list, counts: Counter, quarantine: list[dict]) -> Iterator[dict]:
    """Items of the recipe, in input order: {id, passage | question (+ answer), provenance}."""
    surveys = [survey_source_file(f, 64 * 1024**2) for f in files]
    for file, survey in zip(files, surveys, strict=True):
        if isinstance(survey, str):
            counts["read"] += 1
            counts["quarantined_on_read"] += 1
            quarantine.append({"id": None, "stage": "read", "reason": survey,
                               "provenance": {"file": file.path}})
    emitted = 0
    for planned in plan_chunks(files, surveys):
        convert = _read_exchange if cfg.recipe == "multi_turn" else render_text
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
    elif cfg.recipe == "multi_turn":
        question, answer = json.loads(text)
        yield {"id": base_id, "question": question, "answer": answer, "provenance": where}
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
    """A record in any SFT schema -> its first (question, answer) exchange, as JSON."""
    record_format = detect_record_format(fields)
    if record_format is None:
        raise RecordError(f"not an SFT record (keys {sorted(fields)[:8]})")
    turns = to_conversation(fields, record_format, source.fields).turns
    return json.dumps([turns[0].content, turns[1].content], ensure_ascii=False)


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
    template = getattr(cfg.prompts, cfg.recipe)
    if cfg.recipe == "qa_from_passages":
        return template.replace("{passage}", item["passage"])
    return template.replace("{question}", item["question"]).replace("{answer}", item.get("answer", ""))


def conversations_from(cfg: SynthConfig, item: dict, result: dict) -> list[dict]:
    """ShareGPT records made from one generation; Unparsed / ValueError says why there are none."""
    if result["error"]:
        raise ValueError(result["error"])
    text = result["text"].strip()
    if result["finish_reason"] == "length" and not cfg.keep_truncated:
        raise Unparsed(f"truncated: the answer reached max_tokens={cfg.sampling.max_tokens}")
    provenance = item["provenance"] | {"recipe": cfg.recipe, "model_dir": str(Path(cfg.model_dir).resolve())}
    if cfg.recipe == "qa_from_passages":
        pairs = parse_qa_pairs(text)
        return [_sharegpt(f"{item['id']}#{k}", [("user", q), ("assistant", a)], provenance)
                for k, (q, a) in enumerate(pairs, 1)]
    if not text:
        raise Unparsed("empty answer")
    if cfg.recipe == "polite_refusal":
        return [_sharegpt(item["id"], [("user", item["question"]), ("assistant", text)], provenance)]
    opening = [("user", item["question"]), ("assistant", item["answer"])]
    turns = parse_dialogue(text)
    if turns[:2] == opening:  # the model repeated the pair it was given
        turns = turns[2:]
    if not turns:
        raise Unparsed("the dialogue only repeats the given pair")
    return [_sharegpt(item["id"], opening + turns, provenance)]


def _sharegpt(record_id: str, turns: list[tuple[str, str]], provenance: dict) -> dict:
    return {"id": record_id, "conversations": [{"from": _ROLE_NAMES[r], "value": c} for r, c in turns],
            "provenance": provenance}


def _reconcile(counts: Counter) -> None:
    read = counts["quarantined_on_read"] + counts["ok_records"]
    candidates = counts["skipped_short_passages"] + counts["beyond_max_items"] + counts["items"]
    items = counts["kept_items"] + counts["unparsed_items"] + counts["failed_items"]
    if read != counts["read"] or candidates != counts["candidates"] or items != counts["items"]:
        raise RuntimeError(f"synth: counts do not reconcile: {dict(counts)}")


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
