"""What each stage hands the next: one model per manifest's `outputs`,
written and read through the same class.

    TokenBlocks(...).model_dump(by_alias=True) -> manifest.json "outputs"            (prepare-pretrain)
    outputs_of(manifest, STAGES[manifest.stage].outputs, directory)                  (the next stage)

A manifest written by an older lmforge whose outputs no longer fit fails with a message naming the stage
to rerun, instead of a KeyError deep in training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import ConfigDict, Field, ValidationError

from lmforge.config import StrictModel
from lmforge.manifest import MANIFEST_NAME, Manifest

Outputs = TypeVar("Outputs", bound=StrictModel)


class TokenizerIdentity(StrictModel):
    """lmforge.data.stages.train_tokenizer.tokenizer_identity: which tokenizer the data was made with."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    path: str
    tokenizer_class: str = Field(alias="class")
    vocab_size: int
    bos_token_id: int | None
    eos_token_id: int
    pad_token_id: int | None
    tokenizer_json_sha256: str | None


class TokenizerOutputs(StrictModel):
    tokenizer_dir: str


class PreparedData(StrictModel):
    """What both data stages write beside their shards."""

    dir: str
    shards: list[dict[str, Any]]  # file, sha256, and per-shard counts
    plots: list[str]
    columns: dict[str, str]
    tokenizer: TokenizerIdentity
    quarantine: str
    dedup_clusters: str


class TokenBlocks(PreparedData):
    """prepare-pretrain: blocks of exactly block_size tokens."""

    block_size: int
    blocks: int
    tokens: int
    dropped_remainder_tokens: int

    @property
    def sequence_length(self) -> int:
        return self.block_size


class SFTRows(PreparedData):
    """prepare-sft: packed rows of at most max_length tokens,
    with the chat template and EOS they were rendered with."""

    max_length: int
    pack_mode: str
    template: str
    chat_template: str
    eos_token_id: int
    dedup_key: str
    rows: int
    samples: int
    tokens: int
    trained_tokens: int
    utilisation: float
    trained_token_share: float

    @property
    def sequence_length(self) -> int:
        return self.max_length


class PreferenceRows(PreparedData):
    """prepare-preference: packed rows of whole (chosen, rejected) pairs (KTO: sample + KL sequence)."""

    max_length: int  # per sequence
    row_length: int  # capacity of a row = 2 * max_length
    pack_mode: str
    template: str
    chat_template: str
    eos_token_id: int
    dedup_key: str
    paired: bool  # True: chosen/rejected pairs; False: KTO unpaired samples with labels
    rows: int
    pairs: int  # pairs, or KTO samples
    sequences: int
    tokens: int
    trained_tokens: int
    utilisation: float
    truncated: int
    desirable: int | None  # KTO: samples labelled true / false; None when paired
    undesirable: int | None
    reference: dict[str, Any] | None = None  # set by the reference pass

    @property
    def sequence_length(self) -> int:
        return self.row_length


class TrainingRun(StrictModel):
    run_dir: str
    checkpoint: str | None
    steps: int
    metrics: dict[str, float]
    metrics_file: str
    loss_plot: str
    tokenizer_dir: str
    chat_template: str | None
    eos_token_id: int


class ModelDir(StrictModel):
    model_dir: str
    step: int
    dtype: str
    lora: bool
    merged: bool
    adapter_dir: str | None
    parameters: int
    chat_template: str | None
    eos_token_id: int | None
    ram_estimate_bytes: int
    files: list[dict[str, Any]]
    verification: dict[str, Any] | None


class BatchAnswers(StrictModel):
    dir: str
    data: str
    format: str
    run: Any
    columns: list[str]
    errors: str
    quarantine: str
    seconds: float
    prompts_per_second: float | None
    generated_tokens_per_second: float | None


class SynthData(StrictModel):
    """synth: its records and the source entry that points the next stage at them: sft.jsonl and
    prepare_sft_source (sharegpt), or for recipe preference preference.jsonl and prepare_preference_source
    (pairwise_qa)."""

    dir: str
    record_format: str
    generations: str
    quarantine: str
    sft: str | None = None
    prepare_sft_source: dict[str, str] | None = None
    preference: str | None = None
    prepare_preference_source: dict[str, str] | None = None


class EvalReport(StrictModel):
    dir: str
    report: str
    report_md: str
    predictions: str | None
    open_qa: str | None
    tasks: Any


def outputs_of(manifest: Manifest, model: type[Outputs], directory: str | Path) -> Outputs:
    """`manifest.outputs` as `model`;
    a manifest of an older layout is a ValueError naming the stage to rerun."""
    try:
        return model.model_validate(manifest.outputs)
    except ValidationError as error:
        fields = sorted({".".join(str(part) for part in e["loc"]) for e in error.errors()})
        raise ValueError(
            f"{Path(directory) / MANIFEST_NAME}: written by an lmforge whose {manifest.stage} outputs differ "
            f"from this one's ({', '.join(fields[:5])}); rerun `lmforge {manifest.stage}` to rewrite it"
        ) from None
