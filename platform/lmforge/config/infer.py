"""Settings of the inference stages: batch-infer, synth and eval (Ray Data + vLLM on converted model dirs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lmforge.config.base import RayConfig, StrictModel
from lmforge.config.data import FilesConfig, SFTRecordFormat, SourceConfig, check_source_names


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class EngineConfig(StrictModel):
    """vLLM engine actors that `ray.data.llm` starts (one engine per actor), and what they may take."""

    accelerator: Literal["cpu", "gpu"] = Field("cpu", description="cpu: vLLM's CPU backend; gpu: CUDA vLLM.")
    accelerator_type: str | None = Field(
        None, description="gpu only: Ray accelerator type, e.g. L4, A100, H100."
    )
    min_engines: int = Field(
        1, ge=1, description="Engine actors kept running (autoscaled between min and max)."
    )
    max_engines: int = Field(1, ge=1, description="Most engine actors Ray Data starts when rows wait.")
    batch_size: int = Field(16, ge=1, description="Rows per batch sent to an engine actor.")
    max_concurrent_batches: int = Field(4, ge=1, description="Batches one engine works on at once (overlap).")
    engine_kwargs: dict[str, Any] = Field(
        default_factory=lambda: {"max_model_len": 256, "enforce_eager": True, "dtype": "float32"},
        description="vLLM engine arguments (max_model_len, enforce_eager, dtype, tensor_parallel_size, ...).",
    )
    env: dict[str, str] = Field(
        default_factory=lambda: {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"},
        description="Environment of the engine actors (VLLM_CPU_KVCACHE_SPACE in GiB: else vLLM takes "
        "most of RAM).",
    )

    @model_validator(mode="after")
    def _check(self) -> EngineConfig:
        if self.min_engines > self.max_engines:
            raise ValueError(f"min_engines {self.min_engines} is above max_engines {self.max_engines}")
        if self.accelerator == "cpu" and self.accelerator_type:
            raise ValueError("accelerator_type needs accelerator: gpu")
        if "model" in self.engine_kwargs:
            raise ValueError(
                "engine_kwargs.model: the model is model_dir (or models: in eval), not an engine argument"
            )
        return self


class SamplingConfig(StrictModel):
    """vLLM sampling parameters of every generated answer (temperature 0: greedy, reproducible)."""

    max_tokens: int = Field(
        128, ge=1, description="Most tokens generated per answer (finish_reason 'length')."
    )
    temperature: float = Field(0.0, ge=0, description="0: greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (1: off).")
    repetition_penalty: float = Field(1.0, gt=0, description="vLLM's penalty on repeated tokens (1: none).")
    seed: int | None = Field(
        0, description="Sampling seed per request (same seed, same output when sampling)."
    )


class PromptSourceConfig(FilesConfig):
    """Prompts to answer: a `prompt` field per record, or conversations in any SFT schema (prepare-sft's)."""

    format: Literal["jsonl", "json", "parquet", "csv"] | None = Field(
        None, description="File format; default: from the extension."
    )
    record_format: Literal["auto", "prompt"] | SFTRecordFormat = Field(
        "auto",
        description="prompt: the prompt_field holds the user's text; an SFT schema (alpaca, sharegpt, "
        "...): the conversation up to its last assistant turn is the prompt, that turn the reference; "
        "auto: per record.",
    )
    prompt_field: str = Field(
        "prompt", description="Field holding a plain prompt (record_format prompt or auto)."
    )
    id_field: str = Field("id", description="Field holding the record's id; missing: '<source>:<line>'.")
    fields: dict[str, str] = Field(default_factory=dict, description="SFT schema field -> record field.")
    system: str | None = Field(None, description="System prompt for records that carry none.")

    @property
    def text_unit(self) -> str:  # records are never blank-line paragraphs
        return "line"


class BatchInferConfig(StrictModel):
    """`lmforge batch-infer`: answer every prompt with a converted model; rerunning resumes."""

    model_dir: str = Field(
        description="output_dir of lmforge convert (weights, tokenizer, chat template, EOS)."
    )
    sources: list[PromptSourceConfig] = Field(description="Input prompt files.")
    output_dir: str = Field(
        description="Where data/ (answers), errors/, quarantine.jsonl and manifest.json go."
    )
    output_format: Literal["parquet", "jsonl"] = Field("parquet", description="File format of the answers.")
    read_workers: int = Field(2, ge=1, description="Parallel Ray tasks reading and tokenizing prompts.")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    ray: RayConfig = Field(default_factory=lambda: RayConfig(num_cpus=4))

    @model_validator(mode="after")
    def _names_are_unique(self) -> BatchInferConfig:
        check_source_names(self.sources)
        return self


QA_FROM_PASSAGES = ("根据下面的内容提出1-2个中文医学问题,并利用文本内容回答这几个问题。按下面的格式输出:\n"
                    "问题1:...\n答案1:...\n问题2:...\n答案2:...\n\n内容:\n{passage}")
POLITE_REFUSAL = "请扮演医疗人工智能助手,并委婉的拒绝回答下面的问题:\n{question}"
MULTI_TURN = ("下面是患者和医生的一轮对话。请续写1-2轮:患者根据医生的回答继续追问,医生专业地回答。"
              "每句单独一行,按下面的格式输出:\n患者:...\n医生:...\n\n患者:{question}\n医生:{answer}")


class SynthPromptsConfig(StrictModel):
    """The prompt template of each recipe; `{passage}`, `{question}`, `{answer}` are filled in."""

    qa_from_passages: str = Field(
        QA_FROM_PASSAGES, description="Self-instruct QA from a passage: uses {passage}."
    )
    polite_refusal: str = Field(
        POLITE_REFUSAL,
        description="A harmless refusal of an off-topic {question} (also recipe preference's chosen side).",
    )
    multi_turn: str = Field(MULTI_TURN, description="Continue the {question}/{answer} pair into a dialogue.")

    @model_validator(mode="after")
    def _slots(self) -> SynthPromptsConfig:
        needed = {"qa_from_passages": ("{passage}",), "polite_refusal": ("{question}",),
                  "multi_turn": ("{question}", "{answer}")}
        for name, slots in needed.items():
            missing = [slot for slot in slots if slot not in getattr(self, name)]
            if missing:
                raise ValueError(f"{name}: the template must contain {', '.join(missing)}")
        return self


class SynthConfig(StrictModel):
    """`lmforge synth`: generate SFT conversations with a model (ShareGPT JSONL that prepare-sft reads), or
    preference pairs (pairwise_qa JSONL that prepare-preference reads)."""

    recipe: Literal["qa_from_passages", "polite_refusal", "multi_turn", "preference"] = Field(
        description="qa_from_passages: text -> passages -> QA pairs; polite_refusal: off-topic questions -> "
        "refusals; multi_turn: SFT QA pairs -> dialogues; preference: off-topic questions -> (refusal, the "
        "policy's answer) and SFT QA pairs -> (reference, the policy's answer) pairs.",
    )
    model_dir: str = Field(
        description="The generating model: output_dir of lmforge convert (preference: writes the refusals)."
    )
    sources: list[SourceConfig] = Field(
        description="Inputs. qa_from_passages: text (a paragraph a line); polite_refusal: questions (a "
        "line each, or records with template qa/plain); multi_turn: QA records in any SFT schema; "
        "preference: both kinds, see preference_from.",
    )
    output_dir: str = Field(
        description="Where sft.jsonl (preference: preference.jsonl), generations.jsonl, quarantine.jsonl "
        "and manifest.json go."
    )
    policy_model_dir: str | None = Field(
        None,
        description="preference: the model being aligned (the SFT model), whose own answers to the bare "
        "questions are the rejected side; default: model_dir.",
    )
    preference_from: Literal["both", "refusals", "references"] = Field(
        "both",
        description="preference: how a record is read. refusals: a question (as polite_refusal reads it); "
        "chosen = model_dir's refusal. references: a QA record in any SFT schema (its first exchange); "
        "chosen = its answer. both: per record, an SFT record is a reference, anything else a question.",
    )
    prompts: SynthPromptsConfig = Field(default_factory=SynthPromptsConfig)
    passage_chars: int = Field(
        400, ge=20, description="qa_from_passages: passages are cut to about this many characters."
    )
    min_passage_chars: int = Field(
        40, ge=1, description="qa_from_passages: shorter passages are skipped (headings)."
    )
    max_items: int | None = Field(None, ge=1, description="Use only the first N passages/questions/pairs.")
    keep_truncated: bool = Field(
        False, description="Keep answers cut at max_tokens (default: quarantine them)."
    )
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(max_tokens=256))
    engine: EngineConfig = Field(default_factory=EngineConfig)
    ray: RayConfig = Field(default_factory=lambda: RayConfig(num_cpus=4))

    @model_validator(mode="after")
    def _preference_fields(self) -> SynthConfig:
        if self.recipe != "preference":
            # by value, not model_fields_set: the dump of any synth config (--print-config, the manifest's
            # config) names both fields at their defaults and must load again
            stray = [name for name in ("policy_model_dir", "preference_from")
                     if getattr(self, name) != type(self).model_fields[name].default]
            if stray:
                raise ValueError(f"{', '.join(stray)}: only recipe preference reads it, not {self.recipe}")
        elif self.policy_model_dir is None:
            self.policy_model_dir = self.model_dir
        return self


class EvalModelConfig(StrictModel):
    name: str | None = Field(None, description="Column name in the report; default: the directory's name.")
    path: str = Field(description="A converted model directory.")


class PerplexityTaskConfig(StrictModel):
    """Perplexity on held-out text, read like prepare-pretrain's sources (EOS after each document)."""

    sources: list[SourceConfig] = Field(description="Held-out text in the pretraining source format.")
    window: int = Field(255, ge=2, description="Tokens per scored window (at most max_model_len - 1).")
    max_documents: int | None = Field(None, ge=1, description="Score only the first N documents.")


class MultipleChoiceTaskConfig(StrictModel):
    """Single-answer questions with columns Question, A, B, C, D, Answer (CMMLU / CMExam style),
    CSV or JSON."""

    name: str = Field(description="Task name in the report.")
    path: str = Field(description="Question file (csv, json array, jsonl).")
    dev_path: str | None = Field(None, description="Few-shot examples (same columns); none: zero-shot.")
    shots: int = Field(
        5, ge=0, description="Few-shot examples from dev_path (fewer when a prompt would not fit)."
    )
    subject: str = Field("医学", description="Fills {subject} in the header.")
    header: str = Field("以下是关于{subject}的单项选择题,请直接给出正确答案的选项。\n\n",
                        description="Text before the few-shot examples and the question.")
    question_template: str = Field(
        "题目:{question}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\n答案:",
        description="One question with its options; {question} and the option letters are filled in.",
    )
    continuation: str = Field(
        "{letter}", description="What is scored per option: '{letter}' or '{text}', ..."
    )
    chat: bool = Field(False, description="Wrap the prompt in the model's chat template (for chat models).")
    generate_max_tokens: int = Field(
        8,
        ge=1,
        description="Tokens generated for the by-generation score; raise it for a model that answers "
        "with the option's text, which counts only when whole.",
    )
    max_questions: int | None = Field(None, ge=1, description="Use only the first N questions.")


class OpenQATaskConfig(StrictModel):
    """Answers to case questions (CMB-Clin: [{id, title, description, QA_pairs: [{question, answer}]}])."""

    path: str = Field(description="JSON array of cases.")
    prompt: str = Field(
        "{description}\n\n{question}", description="User turn; fills {title}, {description}, {question}."
    )
    max_description_chars: int = Field(
        600, ge=0, description="Case descriptions are cut to this many characters."
    )
    max_cases: int | None = Field(None, ge=1, description="Use only the first N cases.")
    max_tokens: int = Field(128, ge=1, description="Most tokens of an answer.")


class EvalConfig(StrictModel):
    """`lmforge eval`: perplexity, multiple choice and open QA of several models, side by side."""

    models: list[EvalModelConfig] = Field(description="Model directories to compare (e.g. base and SFT).")
    output_dir: str = Field(
        description="Where report.json, report.md, predictions.jsonl, open_qa.jsonl and manifest.json go."
    )
    perplexity: PerplexityTaskConfig | None = None
    multiple_choice: list[MultipleChoiceTaskConfig] = Field(default_factory=list)
    open_qa: OpenQATaskConfig | None = None
    sampling: SamplingConfig = Field(
        default_factory=SamplingConfig,
        description="Generation of letters and open answers (greedy by default); max_tokens comes from "
        "each task.",
    )
    engine: EngineConfig = Field(default_factory=EngineConfig)
    ray: RayConfig = Field(default_factory=lambda: RayConfig(num_cpus=4))

    @field_validator("models", mode="before")
    @classmethod
    def _paths_are_models(cls, value: Any) -> Any:
        items = _as_list(value)
        return (
            [{"path": item} if isinstance(item, str) else item for item in items]
            if isinstance(items, list)
            else items
        )

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        if not self.models:
            raise ValueError("models: give at least one model directory")
        for model in self.models:
            model.name = model.name or Path(model.path).name
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"models: names must be unique, got {names} (set name:)")
        if not (self.perplexity or self.multiple_choice or self.open_qa):
            raise ValueError("no task: set perplexity, multiple_choice and/or open_qa")
        tasks = [t.name for t in self.multiple_choice]
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"multiple_choice: task names must be unique, got {tasks}")
        return self
