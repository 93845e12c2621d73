"""`lmforge train-tokenizer`: a byte-level BPE tokenizer that `AutoTokenizer.from_pretrained` loads.

No weights can be downloaded here, so the demo and the tests train their own; real users point
configs at a local model directory instead.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lmforge.config import TokenizerTrainConfig
from lmforge.data.files.sources import LocalSources
from lmforge.data.steps.tokenize import TokenizerFiles
from lmforge.manifest import Manifest
from lmforge.stage_outputs import TokenizerIdentity, TokenizerOutputs

log = logging.getLogger(__name__)

# The original recipe's format: "User: q</s>\n Assistant: a</s>\n User: ..." (a space after the
# newline and after each colon); the generation prompt is "\n Assistant: ". A tool's result is
# "Observation: r</s>"; tools go into the system part as "{system}\n\n可用工具:\n{json}".
# Plain Jinja (raise_exception and tojson are the globals transformers and vLLM both provide).
CLASSIC_CHAT_TEMPLATE = (
    "{%- set has_system = messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] if has_system else '' -%}"
    "{%- if tools -%}"
    "{%- set system = (system ~ '\\n\\n' if system else '') ~ '可用工具:\\n' ~ (tools | tojson) -%}"
    "{%- endif -%}"
    "{%- if system -%}{{ system }}{{ eos_token }}{%- endif -%}"
    "{%- for message in (messages[1:] if has_system else messages) -%}"
    "{%- if system or not loop.first %}{{ '\\n ' }}{% endif -%}"
    "{%- if message['role'] == 'user' -%}{{ 'User: ' }}{{ message['content'] }}{{ eos_token }}"
    "{%- elif message['role'] == 'assistant' -%}{{ 'Assistant: ' }}{{ message['content'] }}{{ eos_token }}"
    "{%- elif message['role'] == 'tool' -%}{{ 'Observation: ' }}{{ message['content'] }}{{ eos_token }}"
    "{%- else -%}{{ raise_exception('classic chat template: unknown role ' ~ message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}"
    "{{ '\\n Assistant: ' if (system or messages) else 'Assistant: ' }}{% endif -%}"
)


def train_tokenizer(cfg: TokenizerTrainConfig) -> Manifest:
    """Learn a byte-level BPE vocabulary from the sources and save it to `cfg.output_dir`.

    The manifest lists every input file (size, sha256, encoding, format, or why it could not be read)."""
    from transformers import PreTrainedTokenizerFast  # slow to import: kept out of Ray workers' imports

    specials = [cfg.unk_token, cfg.bos_token, cfg.eos_token, cfg.pad_token]
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    sources = LocalSources.survey(cfg.sources)
    for reason in sources.unreadable():
        log.warning("train-tokenizer: skipped a file: %s", reason)
    counter = _Counter(sources.texts(limit=cfg.max_documents))
    bpe.train_from_iterator(counter, trainer=trainer)
    if counter.count == 0:
        raise ValueError(f"train-tokenizer: the sources {[s.name for s in cfg.sources]} gave no text"
                         + "".join(f"; {reason}" for reason in sources.unreadable()))

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=cfg.bos_token,
        eos_token=cfg.eos_token,
        pad_token=cfg.pad_token,
        unk_token=cfg.unk_token,
        model_max_length=cfg.model_max_length,
    )
    tokenizer.chat_template = cfg.chat_template or CLASSIC_CHAT_TEMPLATE
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    manifest = Manifest(
        stage="train-tokenizer",
        config=cfg.model_dump(),
        inputs=sources.inputs(),
        outputs=TokenizerOutputs(tokenizer_dir=str(out.resolve())).model_dump(),
        counts={"documents": counter.count, "unreadable_files": len(sources.unreadable()),
                "vocab_size": len(tokenizer)},
    )
    manifest.write(out)
    return manifest


def tokenizer_identity(path: str | Path) -> dict:
    """What identifies a tokenizer in a manifest (stage_outputs.TokenizerIdentity, as the manifest's JSON):
    its path, vocabulary, special ids, file hash."""
    tokenizer_json = Path(path) / "tokenizer.json"
    digest = hashlib.sha256(tokenizer_json.read_bytes()).hexdigest() if tokenizer_json.is_file() else None
    files = TokenizerFiles.load(str(path))
    return TokenizerIdentity(
        path=str(Path(path).resolve()),
        tokenizer_class=files.tokenizer_class,
        vocab_size=files.vocab_size,
        bos_token_id=files.special_ids["bos"],
        eos_token_id=files.special_ids["eos"],
        pad_token_id=files.special_ids["pad"],
        tokenizer_json_sha256=digest,
    ).model_dump(by_alias=True)


class _Counter:
    """Passes texts through while counting them (train_from_iterator gives no count back)."""

    def __init__(self, texts: Iterator[str]):
        self._texts = texts
        self.count = 0

    def __iter__(self) -> Iterator[str]:
        for text in self._texts:
            self.count += 1
            yield text
