"""One micro batch of `lmforge align`: packed rows of whole pairs -> the policy's per-sequence log-probs,
the reference's -> the configured preference loss (lmforge.train.preference) and its statistics.

    row       c1 c1 c1 r1 r1 c2 c2 r2 r2 r2 pad      kinds [0, 1, 0, 1], pair_keys [k1, k1, k2, k2]
    policy    forward(packed row, no labels) -> logits -> sum of log p(answer token) per sequence
    reference the data's ref_logps (precomputed by prepare-preference), or in the loop:
              LoRA: the same forward with the adapters disabled; full: a frozen copy of the starting model
              (partitioned by ZeRO like the policy, no optimizer state)

A pair is whole in one row, so chosen and rejected always land in the same micro batch and rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist

from lmforge.config import AlignTrainConfig
from lmforge.train.batches import model_inputs, sft_batch
from lmforge.train.preference import (
    SequenceLogps,
    needs_reference,
    preference_loss,
    sequence_logps,
)

ReferenceKind = Literal["none", "precomputed", "adapters_disabled", "frozen_copy"]


def reference_kind(cfg: AlignTrainConfig, data) -> ReferenceKind:
    """Where this run's reference log-probs come from (run.py has checked that precomputed ones exist)."""
    if not needs_reference(cfg.preference.loss):
        return "none"
    if cfg.reference == "precomputed" or (cfg.reference == "auto" and data.reference_logps):
        return "precomputed"
    return "adapters_disabled" if cfg.lora.enabled else "frozen_copy"


@dataclass
class Reference:
    kind: ReferenceKind
    engine: Any = None  # frozen_copy: a DeepSpeed engine of the starting model, in eval mode

    def logps(self, policy_engine, inputs: dict, labels: torch.Tensor, boundaries, batch) -> torch.Tensor | None:
        """Per-sequence summed log-probs of the reference, flattened in row order like the policy's."""
        if self.kind == "none":
            return None
        if self.kind == "precomputed":
            return torch.as_tensor(np.concatenate([np.asarray(r, np.float64) for r in batch["ref_logps"]]),
                                   dtype=torch.float32)
        with torch.no_grad():
            if self.kind == "adapters_disabled":
                with policy_engine.module.disable_adapter():
                    logits = policy_engine(**inputs).logits
            else:
                logits = self.engine(**inputs).logits
        return sequence_logps(logits, labels, boundaries).sum


def build_reference(kind: ReferenceKind, cfg: AlignTrainConfig, data, ds_config: dict) -> Reference:
    """The in-loop frozen copy for full fine-tuning; nothing to build for the other kinds."""
    if kind != "frozen_copy":
        return Reference(kind)
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    from lmforge.train.model import build_model

    # TRL's prepare_deepspeed does the same: the policy's ZeRO config without optimizer or scheduler, so
    # under ZeRO-3 each worker holds 1/world of the reference and no optimizer state for it.
    config = {key: value for key, value in ds_config.items() if key not in ("optimizer", "scheduler")}
    stage = config["zero_optimization"]["stage"]
    config["zero_optimization"] = {"stage": 3 if stage == 3 else 0}
    hf_config = HfDeepSpeedConfig(config) if stage == 3 else None
    model = build_model(cfg.model, data.vocab_size, cfg.seed)  # the policy's starting weights
    model.requires_grad_(False)
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    engine.hf_deepspeed_config = hf_config  # transformers holds it weakly: it must live as long as the engine
    return Reference(kind, engine)


def preference_micro_batch(
    engine, reference: Reference, batch: dict[str, np.ndarray], data, cfg: AlignTrainConfig, model_type: str
) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """(loss to backpropagate, statistics as sums, trained tokens) of one micro batch of packed rows."""
    rows = [{name: batch[name][i] for name in ("input_ids", "labels", "position_ids", "boundaries")}
            for i in range(len(batch["input_ids"]))]
    tensors = sft_batch(rows, data.sequence_length, data.pad_token_id)
    boundaries = [[int(b) for b in row["boundaries"]] for row in rows]
    padded = [lengths + ([data.sequence_length - sum(lengths)] if sum(lengths) < data.sequence_length else [])
              for lengths in boundaries]  # for the Bloom mask the padding is a sample of its own
    inputs = model_inputs(model_type, tensors, padded)
    labels = inputs.pop("labels")
    kinds = torch.as_tensor(np.concatenate([np.asarray(r, np.int64) for r in batch["kinds"]]))

    policy = sequence_logps(engine(**inputs).logits, labels, boundaries)
    reference_sums = reference.logps(engine, inputs, labels, boundaries, batch)
    kl = None
    if cfg.preference.loss == "kto":
        kl = kto_kl(policy, reference_sums, kinds)
    loss, stats = preference_loss(cfg.preference, policy, reference_sums, kinds, kl=kl)
    return loss, stats, int((labels != -100).sum())


def kto_kl(policy: SequenceLogps, reference_sums: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
    """KTO's KL estimate: the mean of (policy - reference) over the KL sequences, averaged over all ranks
    and clamped at 0, with no gradient (TRL's kto_loss does the same with a gather)."""
    mask = kinds == 2
    local = (policy.sum.detach()[mask] - reference_sums[mask]).mean() if mask.any() else torch.zeros(())
    local = local.to(torch.float64)
    if dist.is_initialized():
        dist.all_reduce(local)
        local /= dist.get_world_size()
    return local.clamp(min=0).to(torch.float32)
