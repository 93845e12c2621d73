"""Settings of the data stages: train-tokenizer, prepare-pretrain, prepare-sft, prepare-preference."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from lmforge.config.base import RayConfig, StrictModel

TemplateName = Literal["plain", "qa", "dialogue", "medical_csv", "format"]
# The chat template a chat data stage renders with (prepare-sft, prepare-preference).
ChatTemplate = Annotated[Literal["classic", "tokenizer"], Field(
    description="classic: 'User: q</s>\\n Assistant: a</s>'; tokenizer: the tokenizer's own chat_template."
)]


class FilesConfig(StrictModel):
    """What every input has: a name, files, their format and how they are encoded."""

    name: str | None = Field(None, description="Name in reports; default: the first path's file stem.")
    path: list[str] = Field(description="File paths or globs (a single string is accepted).")
    format: Literal["text", "jsonl", "json", "parquet", "csv"] | None = Field(
        None,
        description="File format; default: from the extension, then the content (a .json that is not an "
        "array is JSON Lines or pretty-printed objects back to back; "
        "a .txt of JSON objects a line is JSON Lines).",
    )
    encoding: str | None = Field(
        None, description="Text encoding; default: detected per file (UTF-8/BOM/GB18030)."
    )

    @field_validator("path", mode="before")
    @classmethod
    def _one_path_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _default_name(self) -> FilesConfig:
        if not self.path:
            raise ValueError("path: give at least one file or glob")
        if self.name is None:
            self.name = Path(self.path[0]).stem or "source"
        return self


class BaseSourceConfig(FilesConfig):
    """An input source of a data stage: its files and its mixture weight."""

    weight: float | None = Field(
        None, gt=0,
        description="Relative share of the output tokens for the weighted sources; unset: every kept "
        "document appears once (its natural share).",
    )


def check_source_names(sources: list[BaseSourceConfig]) -> None:
    """ValueError unless there is a source and every source's name is its own (names key the counts)."""
    names = [s.name for s in sources]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"sources: names must be unique, repeated: {duplicated} (set name:)")
    if not sources:
        raise ValueError("sources: give at least one source")


class SourceConfig(BaseSourceConfig):
    """One input corpus: files, how to read them, how records become text, and its mixture weight."""

    text_unit: Literal["auto", "line", "paragraph"] = Field(
        "auto",
        description="Plain text: a document per line, or per blank-line-separated paragraph; auto: per file "
        "from its first MB, paragraph when blank lines part blocks of 2-8 lines (a question and its answer) "
        "or hard-wrapped ones, else line.",
    )
    template: TemplateName = Field(
        "plain",
        description="How a record becomes text: plain (one field), qa ('q\\na'), dialogue "
        "('患者:..\\n医生:..'), medical_csv (title, ask, then answer), format (format_string).",
    )
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="Template slot -> record field, e.g. {question: q, answer: a}; defaults per template.",
    )
    format_string: str | None = Field(
        None, description="For template=format: e.g. '{title}\\n{ask}\\n{answer}'."
    )
    roles: dict[str, str] = Field(
        default_factory=lambda: {"user": "患者", "assistant": "医生"},
        description="For template=dialogue: speaker label of each role.",
    )

    @model_validator(mode="after")
    def _check_template(self) -> SourceConfig:
        if self.template == "format" and not self.format_string:
            raise ValueError("template 'format' needs format_string, e.g. '{question}\\n{answer}'")
        return self


class TokenizerTrainConfig(StrictModel):
    """`lmforge train-tokenizer`: a byte-level BPE tokenizer that AutoTokenizer loads."""

    sources: list[SourceConfig] = Field(description="Corpora to learn the vocabulary from.")
    output_dir: str = Field(description="Directory to save the tokenizer to.")
    vocab_size: int = Field(8000, ge=300, description="Vocabulary size including special tokens.")
    min_frequency: int = Field(2, ge=1, description="A merge must occur this often to enter the vocabulary.")
    bos_token: str = Field("<s>", description="Beginning-of-sequence special token.")
    eos_token: str = Field("</s>", description="End-of-sequence token: ends documents and assistant turns.")
    pad_token: str = Field("<pad>", description="Padding special token.")
    unk_token: str = Field("<unk>", description="Unknown-token special token.")
    chat_template: str | None = Field(
        None, description="Jinja chat template; default: the classic User/Assistant one."
    )
    model_max_length: int = Field(
        4096, ge=16, description="The tokenizer's model_max_length (saved with it)."
    )
    max_documents: int | None = Field(None, ge=1, description="Learn from at most this many documents.")



class ReadConfig(StrictModel):
    chunk_mb: float = Field(
        64, gt=0, description="Large text/JSONL files are read in chunks of about this size."
    )


class CleanConfig(StrictModel):
    unicode_form: Literal["NFC", "NFKC", "none"] = Field(
        "NFC", description="Unicode normalisation (NFKC also turns full-width punctuation into ASCII)."
    )
    min_chars: int = Field(10, ge=0, description="Drop documents shorter than this after cleaning.")
    max_chars: int | None = Field(None, ge=1, description="Drop documents longer than this.")
    max_repeated_line_ratio: float = Field(
        0.3, ge=0, le=1, description="Drop when this share of a document's lines are repeats of another line."
    )
    max_char_repetition_ratio: float = Field(
        0.5, ge=0, le=1, description="Drop when this share of character 10-grams are repeats (spam, tables)."
    )
    max_symbol_ratio: float = Field(
        0.5, ge=0, le=1, description="Drop when this share of characters is neither letter, digit nor space."
    )


class DedupConfig(StrictModel):
    exact: bool = Field(
        True, description="Drop documents equal after normalisation (case, space, punctuation)."
    )
    near: bool = Field(True, description="Drop near-duplicates found by MinHash-LSH on character n-grams.")
    threshold: float = Field(
        0.8, gt=0, lt=1, description="Jaccard similarity at which documents count as duplicates."
    )
    ngram: int = Field(5, ge=1, description="Character n-gram length (characters, so Chinese works).")
    num_perm: int = Field(128, ge=16, description="MinHash permutations.")
    sample_clusters: int = Field(
        20, ge=0, description="Duplicate clusters written out for a human to inspect."
    )


SFTDedupKey = Literal["prompt", "first_turn", "conversation"]
SplitDialogue = Literal["auto", "always", "never"]


class SFTDedupConfig(DedupConfig):
    key: SFTDedupKey = Field(
        "prompt",
        description="What two samples must share to be duplicates: "
        "prompt (system + tools + every user turn), first_turn (the first user turn only), "
        "conversation (every turn, answers too).",
    )
    drop_prefixes: bool = Field(
        True,
        description="Drop a conversation whose turns are the start of a longer one (cumulative history).",
    )


class MixConfig(StrictModel):
    total_tokens: int | None = Field(
        None, ge=1, description="Output size in tokens; default: the kept tokens of all sources."
    )


class PackConfig(StrictModel):
    block_size: int = Field(1024, ge=8, description="Tokens per training block (1024/2048/4096).")
    add_bos: bool = Field(False, description="Put BOS before each document (EOS always ends one).")
    blocks_per_shard: int = Field(8192, ge=1, description="Blocks per output Parquet shard.")


class TokenizeConfig(StrictModel):
    batch_size: int = Field(256, ge=1, description="Documents per tokenizer call.")
    threads_per_worker: int = Field(1, ge=1, description="Threads of the fast tokenizer inside each worker.")


class DataStageConfig(StrictModel):
    """What both data stages have: sources in, a tokenizer, an output dir, and how they run on Ray."""

    sources: list[BaseSourceConfig] = Field(description="Inputs.")
    tokenizer: str = Field(description="Local tokenizer or model directory (AutoTokenizer).")
    output_dir: str = Field(description="Where shards, manifest.json and quarantine.jsonl go.")
    workers: int = Field(
        2, ge=1, description="Most Ray tasks of one step at once (reading, dedup, tokenizing)."
    )
    seed: int = Field(0, description="Seeds MinHash and mixture sampling: same seed, same output.")
    read: ReadConfig = Field(default_factory=ReadConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    mix: MixConfig = Field(default_factory=MixConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _names_are_unique(self) -> DataStageConfig:
        check_source_names(self.sources)
        return self


class PretrainDataConfig(DataStageConfig):
    """`lmforge prepare-pretrain`: raw corpora -> cleaned, deduplicated, mixed, packed token blocks."""

    sources: list[SourceConfig] = Field(description="Input corpora.")
    clean: CleanConfig = Field(default_factory=CleanConfig)
    tokenize: TokenizeConfig = Field(default_factory=TokenizeConfig)
    pack: PackConfig = Field(default_factory=PackConfig)


SFTRecordFormat = Literal[
    "auto", "alpaca", "chatglm2", "sharegpt", "chatglm3", "openai", "advertisegen", "medical_csv", "qa"
]


class RecordSourceConfig(BaseSourceConfig):
    """A dataset of structured records (SFT, preference): files, field names, a default system prompt."""

    format: Literal["jsonl", "json", "parquet", "csv"] | None = Field(
        None,
        description="File format; default: from the extension, then the content (JSON Lines or "
        "pretty-printed objects back to back in a .json; JSON Lines in a .txt).",
    )
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="Schema field -> record field for other datasets, "
        "e.g. {instruction: prompt, output: answer} or {chosen: better, rejected: worse}.",
    )
    system: str | None = Field(None, description="System prompt for records that carry none.")

    @property
    def text_unit(self) -> str:  # records are never blank-line paragraphs
        return "line"


class SFTSourceConfig(RecordSourceConfig):
    """One SFT dataset: files, their record schema, and its mixture weight."""

    record_format: SFTRecordFormat = Field(
        "auto",
        description="Record schema: alpaca, chatglm2 (prompt, response, history), sharegpt, chatglm3, "
        "openai, advertisegen, medical_csv, qa; auto detects it per file from the first record.",
    )
    split_dialogue: SplitDialogue = Field(
        "auto",
        description="An alpaca instruction or chatglm2 prompt written as a dialogue with role markers "
        "(`<user>:` `<bot>:`, `患者:` `医生:`, `Human:` `Assistant:`, `用户:` `助手:`, `User:` `Assistant:`) "
        "becomes turns. auto: when it starts with a user marker and has an assistant marker; always: "
        "wherever both occur; never: one user turn.",
    )


class SFTPackConfig(StrictModel):
    mode: Literal["packed", "padded"] = Field(
        "packed",
        description="packed: several samples per row (best-fit decreasing); padded: one sample per row.",
    )
    group_size: int = Field(
        20000, ge=1, description="Samples packed together on one worker; larger packs tighter."
    )


class SFTDataConfig(DataStageConfig):
    """`lmforge prepare-sft`: SFT datasets -> label-masked, deduplicated, mixed, packed samples."""

    sources: list[SFTSourceConfig] = Field(description="Input datasets.")
    template: ChatTemplate = "classic"
    max_length: int = Field(
        1024, ge=16, description="Tokens per training row; longer conversations keep whole turns."
    )
    dedup: SFTDedupConfig = Field(default_factory=SFTDedupConfig)
    pack: SFTPackConfig = Field(default_factory=SFTPackConfig)



PreferenceRecordFormat = Literal[
    "auto", "sharegpt_pair", "pairwise_qa", "messages_pair", "llamafactory_v1", "kto"
]
PreferenceDedupKey = Literal["prompt", "pair"]


class PreferenceSourceConfig(RecordSourceConfig):
    """One preference dataset: files, their record schema, and its mixture weight."""

    record_format: PreferenceRecordFormat = Field(
        "auto",
        description="Record schema: sharegpt_pair ({conversations, chosen, rejected}), pairwise_qa "
        "({question|prompt|instruction, response_chosen|chosen, response_rejected|rejected, history?}), "
        "messages_pair ({chosen: [messages], rejected: [messages]} sharing a prefix, or with prompt), "
        "llamafactory_v1 ({chosen_messages, rejected_messages} with loss_weight), kto ({messages, label} "
        "or {prompt, completion, label}: unpaired); auto detects it per file from the first record.",
    )

    @property
    def paired(self) -> bool | None:
        """True: chosen/rejected pairs; False: KTO's unpaired samples; None: not known before detection."""
        return None if self.record_format == "auto" else self.record_format != "kto"


class PreferenceDedupConfig(DedupConfig):
    key: PreferenceDedupKey = Field(
        "prompt",
        description="What two records must share to be duplicates: prompt (system + tools + every turn "
        "before the answers, tool results included: the same question asked again goes, even with other "
        "answers), pair (the prompt and the answers: only repeated records go; KTO: prompt and completion).",
    )


class PreferencePackConfig(StrictModel):
    mode: Literal["packed", "padded"] = Field(
        "packed",
        description="packed: several pairs per row (best-fit decreasing), each pair whole; padded: one "
        "pair per row (KTO: one sample and its KL sequence).",
    )
    group_size: int = Field(
        20000, ge=1,
        description="Pairs packed together on one worker; larger packs tighter. KTO's KL sequences pair "
        "each sample with the next one of its group.",
    )


class PreferenceReferenceConfig(StrictModel):
    model_dir: str | None = Field(
        None,
        description="a converted model dir (normally the SFT model); its log-probs of every sequence are "
        "stored as ref_logps so training needs no reference model",
    )
    batch_size: int = Field(8, ge=1, description="Rows per forward pass of the reference model.")
    workers: int = Field(1, ge=1, description="Reference model replicas computing log-probs at once.")


class PreferenceDataConfig(DataStageConfig):
    """`lmforge prepare-preference`: preference pairs (or KTO samples) -> label-masked, packed rows of whole
    pairs."""

    sources: list[PreferenceSourceConfig] = Field(
        description="Input datasets: all paired (chosen/rejected) or all KTO (unpaired, labelled)."
    )
    template: ChatTemplate = "classic"
    max_length: int = Field(
        1024, ge=16,
        description="Tokens per sequence (prompt + one answer); a row holds 2 * max_length. A longer pair "
        "loses earlier turns of its prompt, then the start of its last user turn, then the end of its "
        "answers.",
    )
    max_prompt_length: int | None = Field(
        None, ge=8,
        description="Longest prompt in tokens: a longer one is always shortened (earlier turns first, then "
        "the start of the last user turn). Unset: a prompt is only shortened when its pair does not fit, "
        "and keeps at least max_length / 2 tokens (or all it has).",
    )
    dedup: PreferenceDedupConfig = Field(default_factory=PreferenceDedupConfig)
    pack: PreferencePackConfig = Field(default_factory=PreferencePackConfig)
    reference: PreferenceReferenceConfig = Field(default_factory=PreferenceReferenceConfig)

    @model_validator(mode="after")
    def _check_lengths_and_kinds(self) -> PreferenceDataConfig:
        if self.max_prompt_length is not None and self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"max_prompt_length ({self.max_prompt_length}) must be below max_length ({self.max_length}): "
                "the answers need room"
            )
        check_one_kind_of_data({s.name: s.paired for s in self.sources})
        return self


def check_one_kind_of_data(paired_by_source: dict[str, bool | None]) -> None:
    """ValueError naming the sources when paired sources and KTO (unpaired) sources are mixed."""
    kto = sorted(name for name, paired in paired_by_source.items() if paired is False)
    pairs = sorted(name for name, paired in paired_by_source.items() if paired)
    if kto and pairs:
        raise ValueError(
            f"sources: KTO (unpaired) sources {kto} and paired sources {pairs} cannot be mixed in one "
            "prepare-preference run: the trainer takes either pairs (DPO and kin) or labelled samples (KTO); "
            "prepare them in two runs"
        )
