"""Preference losses equal TRL 1.16's on the same log-probs; packed log-probs equal each sequence's alone.

TRL is the oracle, called through its real trainers, built cheaply (a tiny model from a config, a
one-example dataset, a tokenizer made in memory, no downloads). DPO, IPO and KTO have no loss function
of their own in TRL 1.16: their math sits inside `_compute_loss`, which runs the model, so those tests
run it on real batches (reference log-probs precomputed, i.e. given) and feed lmforge the per-sequence
log-probs TRL's own forward returns. CPO (SimPO) and ORPO have loss methods and a static
`get_batch_logps`, called on random logits.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer
from trl.experimental.cpo import CPOConfig, CPOTrainer
from trl.experimental.orpo import ORPOConfig, ORPOTrainer

from lmforge.config import ModelConfig, PreferenceConfig
from lmforge.train.batches import packed_row_inputs
from lmforge.train.model import TINY_CONFIGS, build_model
from lmforge.train.preference import (
    SequenceLogps,
    dpo_loss,
    kto_local_kl,
    mean_nll,
    metric_means,
    preference_loss,
    sequence_logps,
)

VOCAB = 97
TOLERANCE = 1e-6  # fp32, losses and rewards against TRL
PACKED_TOLERANCE = 1e-5  # fp32, a packed row's log-probs against each sequence alone
TRL_METRICS = {"rewards/chosen": "rewards_chosen", "rewards/rejected": "rewards_rejected",
               "rewards/margins": "reward_margin", "rewards/accuracies": "reward_accuracy",
               "logps/chosen": "logps_chosen", "logps/rejected": "logps_rejected", "kl": "kl"}


def _tiny_model(architecture: str = "llama", seed: int = 0) -> transformers.PreTrainedModel:
    # initializer_range 0.2 (not 0.02): log-probs that differ between tokens and depend on the context
    cfg = ModelConfig(architecture=architecture,
                      config={**TINY_CONFIGS[architecture], "initializer_range": 0.2})
    return build_model(cfg, VOCAB, seed=seed)


@pytest.fixture(scope="module")
def trl_trainer(tmp_path_factory):
    """Build a real TRL trainer of `trainer_class` with `config_class(**settings)` on a tiny Llama."""
    tokenizer = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="t0",
                                                     eos_token="t1")
    paired = Dataset.from_dict({"prompt": ["t2 t3"], "chosen": [" t4"], "rejected": [" t5"]})
    unpaired = Dataset.from_dict({"prompt": ["t2 t3", "t6"], "completion": [" t4", " t5"],
                                  "label": [True, False]})

    def build(trainer_class, config_class, **settings):
        args = config_class(output_dir=str(tmp_path_factory.mktemp("trl")), report_to=[], use_cpu=True,
                            logging_strategy="no", save_strategy="no", **settings)
        data = unpaired if trainer_class is KTOTrainer else paired
        return trainer_class(model=_tiny_model(), args=args, train_dataset=data, processing_class=tokenizer)

    return build


def _random_ids(generator: torch.Generator, low: int, high: int) -> list[int]:
    n = int(torch.randint(low, high + 1, (), generator=generator))
    return torch.randint(2, VOCAB, (n,), generator=generator).tolist()


def _trl_logps(trainer, input_ids, attention_mask, completion_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sums of log p(completion tokens) and their counts, from TRL's own fused forward."""
    labels = input_ids.masked_fill(completion_mask == 0, -100)
    with torch.no_grad():
        out = trainer.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                            fused_lm_head=True)
    return out.log_probs.sum(1), completion_mask.sum(1)


def _trl_loss_and_metrics(trainer, batch) -> tuple[float, dict[str, float]]:
    """TRL's `_compute_loss` on `batch` and the metrics it logged for it, under lmforge's names."""
    trainer._metrics["train"].clear()
    loss = trainer._compute_loss(trainer.model, batch, return_outputs=False).item()
    logged = trainer._metrics["train"]
    return loss, {ours: logged[name][-1] for name, ours in TRL_METRICS.items() if logged.get(name)}


def _interleave(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    return torch.stack([first, second], dim=1).flatten()


def _assert_close(ours: dict[str, float], trl: dict[str, float]) -> None:
    """Same metrics, within TOLERANCE; logps_* (sums near -25, where one fp32 step is 2e-6) relatively."""
    assert set(ours) == set(trl)
    for name, value in trl.items():
        scale = max(1.0, abs(value)) if name.startswith("logps") else 1.0
        assert abs(ours[name] - value) <= TOLERANCE * scale, (name, ours[name], value)


def _pair_batch(trainer, pairs: int, seed: int) -> dict[str, torch.Tensor]:
    """A collated DPO batch of random pairs; reference log-probs = the policy's + noise (precomputed)."""
    g = torch.Generator().manual_seed(seed)
    examples = [{"prompt_ids": _random_ids(g, 1, 5), "chosen_ids": _random_ids(g, 1, 6),
                 "rejected_ids": _random_ids(g, 1, 6)} for _ in range(pairs)]
    batch = trainer.data_collator(examples)
    logps, _ = _trl_logps(trainer, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    reference = logps + 4 * torch.randn(logps.shape, generator=g)
    batch["ref_chosen_logps"], batch["ref_rejected_logps"] = reference.chunk(2)
    return batch


def _ours_on_pair_batch(trainer, batch, settings: PreferenceConfig) -> tuple[float, dict[str, float]]:
    logps, tokens = _trl_logps(trainer, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    policy = SequenceLogps(sum=_interleave(*logps.chunk(2)), tokens=_interleave(*tokens.chunk(2)))
    reference = _interleave(batch["ref_chosen_logps"], batch["ref_rejected_logps"])
    kinds = torch.tensor([0, 1] * (len(logps) // 2), dtype=torch.int8)
    loss, sums = preference_loss(settings, policy, reference, kinds)
    return loss.item(), metric_means(sums)


def _single_pairs(batch) -> list[dict[str, torch.Tensor]]:
    pairs = len(batch["ref_chosen_logps"])
    return [{key: value[[i, pairs + i]] if value.dim() == 2 else value[[i]] for key, value in batch.items()}
            for i in range(pairs)]


@pytest.mark.parametrize("loss_type, beta", [("sigmoid", 0.3), ("ipo", 0.5)])
@pytest.mark.parametrize("pairs", [1, 3, 8])
def test_dpo_and_ipo_equal_trl_dpo_trainer(trl_trainer, loss_type, beta, pairs):
    """Batch loss and metrics, then each pair alone (TRL's `_compute_loss` only returns the batch mean)."""
    trainer = trl_trainer(DPOTrainer, DPOConfig, loss_type=loss_type, beta=beta,
                          precompute_ref_log_probs=True)
    settings = PreferenceConfig(loss="dpo" if loss_type == "sigmoid" else "ipo", beta=beta)
    batch = _pair_batch(trainer, pairs, seed=pairs)
    for part in [batch, *_single_pairs(batch)] if pairs > 1 else [batch]:
        trl_loss, trl_metrics = _trl_loss_and_metrics(trainer, part)
        loss, metrics = _ours_on_pair_batch(trainer, part, settings)
        assert abs(loss - trl_loss) <= TOLERANCE
        _assert_close(metrics, trl_metrics)


@pytest.mark.parametrize("pairs", [1, 3, 8])
def test_dpo_with_sft_weight_equals_trl_sigmoid_plus_weighted_sft(trl_trainer, pairs):
    """RPO: DPOTrainer's loss_type ["sigmoid", "sft"], loss_weights [1, 0.5]: the chosen NLL per token
    added."""
    trainer = trl_trainer(DPOTrainer, DPOConfig, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5],
                          beta=0.3, precompute_ref_log_probs=True)
    batch = _pair_batch(trainer, pairs, seed=pairs)
    trl_loss, trl_metrics = _trl_loss_and_metrics(trainer, batch)
    settings = PreferenceConfig(loss="dpo", beta=0.3, sft_weight=0.5)
    loss, metrics = _ours_on_pair_batch(trainer, batch, settings)
    assert abs(loss - trl_loss) <= TOLERANCE
    assert "nll" in metrics
    _assert_close({name: value for name, value in metrics.items() if name != "nll"}, trl_metrics)


@pytest.mark.parametrize("pairs", [1, 4, 16])
def test_conservative_dpo_equals_trls_label_smoothed_sigmoid(trl_trainer, pairs):
    """TRL 1.16's DPOTrainer "sigmoid" ignores label_smoothing; CPOTrainer's "sigmoid" is the conservative
    form, so on the log-ratios logp(policy) - logp(reference) it is conservative DPO."""
    cpo = trl_trainer(CPOTrainer, CPOConfig, loss_type="sigmoid", beta=0.2, label_smoothing=0.15,
                      cpo_alpha=0.0)
    g = torch.Generator().manual_seed(pairs)
    policy = SequenceLogps(sum=-30 * torch.rand(2 * pairs, generator=g), tokens=torch.full((2 * pairs,), 7))
    reference = policy.sum + 5 * torch.randn(2 * pairs, generator=g)
    logratios = policy.sum - reference
    trl_losses, trl_chosen, trl_rejected = cpo.cpo_loss(logratios[0::2], logratios[1::2])

    ours = dpo_loss(logratios[0::2], logratios[1::2], beta=0.2, label_smoothing=0.15)
    assert torch.allclose(ours.losses, trl_losses, rtol=0, atol=TOLERANCE)
    assert torch.allclose(ours.chosen_rewards, trl_chosen, rtol=0, atol=TOLERANCE)
    assert torch.allclose(ours.rejected_rewards, trl_rejected, rtol=0, atol=TOLERANCE)
    settings = PreferenceConfig(loss="dpo", beta=0.2, label_smoothing=0.15)
    loss, _ = preference_loss(settings, policy, reference, torch.tensor([0, 1] * pairs, dtype=torch.int8))
    assert abs(loss.item() - trl_losses.mean().item()) <= TOLERANCE


def _logits_and_labels(sequences: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """Random logits of one sequence per row (right-padded): a prompt of 1-4 tokens (label -100), then
    an answer of 1-7; and each row's boundaries."""
    g = torch.Generator().manual_seed(seed)
    length = 12
    labels = torch.full((sequences, length), -100)
    boundaries = []
    for row in range(sequences):
        prompt, answer = (int(torch.randint(1, high, (), generator=g)) for high in (5, 8))
        labels[row, prompt:prompt + answer] = torch.randint(0, VOCAB, (answer,), generator=g)
        boundaries.append([prompt + answer])
    return 3 * torch.randn(sequences, length, VOCAB, generator=g), labels, boundaries


@pytest.mark.parametrize("pairs", [1, 3, 8])
def test_simpo_equals_trl_cpo_trainer_simpo(trl_trainer, pairs):
    cpo = trl_trainer(CPOTrainer, CPOConfig, loss_type="simpo", cpo_alpha=0.0, beta=2.0, simpo_gamma=0.7,
                      label_smoothing=0.1)
    logits, labels, boundaries = _logits_and_labels(2 * pairs, seed=pairs)
    means = CPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
    trl_losses, trl_chosen, trl_rejected = cpo.cpo_loss(means[0::2], means[1::2])

    settings = PreferenceConfig(loss="simpo", beta=2.0, simpo_gamma=0.7, label_smoothing=0.1)
    policy = sequence_logps(logits, labels, boundaries)
    loss, sums = preference_loss(settings, policy, None, torch.tensor([0, 1] * pairs, dtype=torch.int8))
    assert abs(loss.item() - trl_losses.mean().item()) <= TOLERANCE
    # TRL logs logps/* as per-token means for SimPO; lmforge's logps_* are always per-sequence sums
    _assert_close({k: v for k, v in metric_means(sums).items() if not k.startswith("logps")},
                  _pair_reward_means(trl_chosen, trl_rejected))


def _pair_reward_means(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    """The reward metrics TRL's paired trainers log from per-pair rewards."""
    return {"rewards_chosen": chosen.mean().item(), "rewards_rejected": rejected.mean().item(),
            "reward_margin": (chosen - rejected).mean().item(),
            "reward_accuracy": (chosen > rejected).float().mean().item()}


@pytest.mark.parametrize("pairs", [1, 3, 8])
def test_orpo_equals_trl_odds_ratio_loss_plus_the_chosen_nll(trl_trainer, pairs):
    orpo = trl_trainer(ORPOTrainer, ORPOConfig, beta=0.25)
    logits, labels, boundaries = _logits_and_labels(2 * pairs, seed=10 + pairs)
    means = ORPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
    odds_terms, trl_chosen, trl_rejected, _, _ = orpo.odds_ratio_loss(means[0::2], means[1::2])
    # TRL's NLL: CrossEntropyLoss (mean over tokens) of the shifted chosen rows. TRL scores prompt and
    # answer there; lmforge scores the tokens the data labels (the answer), as its other losses do.
    nll = torch.nn.CrossEntropyLoss()(logits[0::2, :-1].reshape(-1, VOCAB), labels[0::2, 1:].reshape(-1))
    trl_loss = nll - odds_terms.mean()

    settings = PreferenceConfig(loss="orpo", beta=0.25)
    policy = sequence_logps(logits, labels, boundaries)
    loss, sums = preference_loss(settings, policy, None, torch.tensor([0, 1] * pairs, dtype=torch.int8))
    assert abs(loss.item() - trl_loss.item()) <= TOLERANCE
    metrics = metric_means(sums)
    assert abs(metrics.pop("nll") - nll.item()) <= TOLERANCE
    _assert_close({k: v for k, v in metrics.items() if not k.startswith("logps")},
                  _pair_reward_means(trl_chosen, trl_rejected))


def _kto_batch(trainer, desirable: list[bool], kl: float, seed: int) -> dict[str, torch.Tensor]:
    """A collated KTO batch; reference log-probs = the policy's + noise, and of the KL sequences the
    policy's - `kl`, so that TRL's KL estimate is `kl`."""
    g = torch.Generator().manual_seed(seed)
    examples = [{"prompt_ids": _random_ids(g, 1, 5), "completion_ids": _random_ids(g, 1, 6),
                 "KL_completion_ids": _random_ids(g, 1, 6), "label": label} for label in desirable]
    batch = trainer.data_collator(examples)
    logps, _ = _trl_logps(trainer, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    kl_logps, _ = _trl_logps(trainer, batch["KL_input_ids"], batch["KL_attention_mask"],
                             batch["KL_completion_mask"])
    batch["ref_logps"] = logps + 3 * torch.randn(logps.shape, generator=g)
    batch["ref_KL_logps"] = kl_logps - kl
    return batch


@pytest.mark.parametrize("desirable, kl", [
    ([True, False, True, True, False], 0.8),
    ([True, False, False, True], -0.5),  # a negative estimate: TRL clamps it at 0
    ([True, True, True], 0.3),
    ([False, False], 0.3),
    ([True], 0.2),
    ([False], -0.1),
])
def test_kto_equals_trl_kto_trainer(trl_trainer, desirable, kl):
    trainer = trl_trainer(KTOTrainer, KTOConfig, loss_type="kto", beta=0.4, desirable_weight=1.3,
                          undesirable_weight=0.6, precompute_ref_log_probs=True,
                          per_device_train_batch_size=2)  # TRL's KL estimate wants batches > 1
    batch = _kto_batch(trainer, desirable, kl, seed=len(desirable))
    trl_loss, trl_metrics = _trl_loss_and_metrics(trainer, batch)

    logps, tokens = _trl_logps(trainer, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    kl_logps, kl_tokens = _trl_logps(trainer, batch["KL_input_ids"], batch["KL_attention_mask"],
                                     batch["KL_completion_mask"])
    policy = SequenceLogps(sum=_interleave(logps, kl_logps), tokens=_interleave(tokens, kl_tokens))
    reference = _interleave(batch["ref_logps"], batch["ref_KL_logps"])
    kinds = torch.tensor([k for label in desirable for k in (0 if label else 1, 2)], dtype=torch.int8)
    settings = PreferenceConfig(loss="kto", beta=0.4, desirable_weight=1.3, undesirable_weight=0.6)
    local_kl = kto_local_kl(policy, reference, kinds)  # one rank: the all-reduced mean is this
    loss, sums = preference_loss(settings, policy, reference, kinds, kl=local_kl)
    assert abs(loss.item() - trl_loss) <= TOLERANCE
    _assert_close(metric_means(sums), trl_metrics)  # a side the batch lacks is absent from both


def test_metric_means_weigh_every_sequence_added_over_ranks_and_steps():
    """Sums of micro-batches with only desirable and only undesirable samples average like one batch."""
    settings = PreferenceConfig(loss="kto")
    g = torch.Generator().manual_seed(0)

    def kto_sums(kinds: list[int], kl: float) -> dict[str, torch.Tensor]:
        policy = SequenceLogps(sum=-20 * torch.rand(len(kinds), generator=g),
                               tokens=torch.full((len(kinds),), 5))
        reference = policy.sum + torch.randn(len(kinds), generator=g)
        return preference_loss(settings, policy, reference, torch.tensor(kinds), kl=torch.tensor(kl))[1]

    only_desirable, only_undesirable = kto_sums([0, 2, 0, 2, 0, 2], 0.4), kto_sums([1, 2], 0.2)
    assert "rewards_rejected" not in metric_means(only_desirable)
    assert all(torch.isfinite(v) for v in only_desirable.values())
    added = {key: only_desirable[key] + only_undesirable[key] for key in only_desirable}
    means = metric_means(added)
    assert means["rewards_chosen"] == pytest.approx(only_desirable["rewards_chosen_sum"].item() / 3)
    assert means["rewards_rejected"] == pytest.approx(only_undesirable["rewards_rejected_sum"].item())
    assert means["reward_margin"] == pytest.approx(means["rewards_chosen"] - means["rewards_rejected"])
    assert means["kl"] == pytest.approx(0.3)


def test_preference_loss_refuses_inputs_that_do_not_fit_the_loss():
    policy = SequenceLogps(sum=torch.tensor([-3.0, -4.0, -5.0]), tokens=torch.tensor([2, 2, 2]))
    reference = torch.tensor([-3.5, -4.5, -5.5])
    with pytest.raises(ValueError, match="not pairs of chosen"):
        preference_loss(PreferenceConfig(loss="dpo"), policy, reference, torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="pass the reference model's log-probs"):
        preference_loss(PreferenceConfig(loss="ipo"), policy, None, torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="reference-free"):
        preference_loss(PreferenceConfig(loss="simpo"), policy, reference, torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="kl is required"):
        preference_loss(PreferenceConfig(loss="kto"), policy, reference, torch.tensor([0, 2, 1]))
    pairs = SequenceLogps(sum=policy.sum[:2], tokens=policy.tokens[:2])
    with pytest.raises(ValueError, match=r"kinds \[1, 0\] are not pairs"):
        preference_loss(PreferenceConfig(loss="orpo"), pairs, None, torch.tensor([1, 0]))


def test_needs_reference_names_dpo_ipo_and_kto():
    assert [loss for loss in ("dpo", "ipo", "simpo", "orpo", "kto")
            if PreferenceConfig(loss=loss).needs_reference] == ["dpo", "ipo", "kto"]


# --- per-sequence log-probs of packed rows ------------------------------------------------------------

ROW_LENGTH = 24


def _sequences(seed: int) -> list[dict[str, list[int]]]:
    """Six prompt + answer sequences; the prompt's labels (and so the first label) are -100."""
    rng = np.random.default_rng(seed)
    sequences = []
    for prompt, answer in [(3, 5), (1, 4), (4, 3), (2, 2), (5, 1), (1, 6)]:
        ids = rng.integers(0, VOCAB, prompt + answer).tolist()
        sequences.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return sequences


def _packed_rows(sequences) -> list[dict[str, list[int]]]:
    """Rows of 1, 2 and 3 sequences (every row then padded by sft_batch), laid out as row_packing does."""
    rows = []
    for group in (sequences[:1], sequences[1:3], sequences[3:]):
        rows.append({"input_ids": [t for s in group for t in s["input_ids"]],
                     "labels": [t for s in group for t in s["labels"]],
                     "position_ids": [p for s in group for p in range(len(s["input_ids"]))],
                     "boundaries": [len(s["input_ids"]) for s in group]})
    assert all(len(row["input_ids"]) < ROW_LENGTH for row in rows)  # padding after the last sequence
    return rows


def _alone(model, sequence) -> tuple[float, int]:
    """Sum of log p(label) of one sequence run in a row of its own (positions from 0), and its count."""
    ids, labels = torch.tensor(sequence["input_ids"]), torch.tensor(sequence["labels"])
    with torch.no_grad():
        logits = model(input_ids=ids[None], use_cache=False).logits[0, :-1]
    trained = labels[1:] != -100
    token_logps = torch.log_softmax(logits.double(), -1).gather(-1, labels[1:, None].clamp(min=0))[:, 0]
    return token_logps[trained].sum().item(), int(trained.sum())


@pytest.fixture(scope="module", params=["llama", "qwen2", "bloom"])
def packed_model(request):
    model_type = request.param
    return model_type, _tiny_model(model_type).eval()


def _packed_logps(model_type, model, rows) -> SequenceLogps:
    """As the trainer and the reference pass compute them (packed_row_inputs, then sequence_logps)."""
    inputs, boundaries = packed_row_inputs(rows, ROW_LENGTH, 0, model_type)
    labels = inputs.pop("labels")
    with torch.no_grad():
        logits = model(**inputs).logits
    return sequence_logps(logits, labels, boundaries)


def test_packed_sequence_logps_equal_each_sequence_alone(packed_model):
    model_type, model = packed_model
    sequences = _sequences(seed=3)
    packed = _packed_logps(model_type, model, _packed_rows(sequences))
    alone = [_alone(model, sequence) for sequence in sequences]
    assert packed.tokens.tolist() == [count for _, count in alone]
    assert max(abs(p - a) for p, (a, _) in zip(packed.sum.tolist(), alone, strict=True)) <= PACKED_TOLERANCE


def test_mean_nll_is_the_models_own_loss_over_the_chosen_answers(packed_model):
    """The SFT loss of ORPO: over the chosen (here: even) sequences, per trained token."""
    model_type, model = packed_model
    sequences = _sequences(seed=4)
    packed = _packed_logps(model_type, model, _packed_rows(sequences))
    alone = [_alone(model, sequence) for sequence in sequences[0::2]]
    expected = -sum(total for total, _ in alone) / sum(count for _, count in alone)
    assert abs(mean_nll(packed, slice(0, None, 2)).item() - expected) <= PACKED_TOLERANCE


def test_sequence_logps_of_bf16_logits_are_float32_and_differentiable():
    logits, labels, boundaries = _logits_and_labels(4, seed=0)
    half = logits.bfloat16().requires_grad_()
    logps = sequence_logps(half, labels, boundaries)
    assert logps.sum.dtype == torch.float32
    assert torch.allclose(logps.sum, sequence_logps(half.detach().float(), labels, boundaries).sum)
    logps.sum.sum().backward()
    assert half.grad is not None and half.grad[labels == -100].abs().sum() > 0  # a prompt token predicts


def test_sequence_logps_refuses_a_trained_label_on_a_sequences_first_token():
    labels = torch.tensor([[-100, 5, 6, 7, 8, -100]])  # the second sequence starts at position 3
    with pytest.raises(ValueError, match="row 0 position 3: a trained label outside a sequence or on its"):
        sequence_logps(torch.zeros(1, 6, VOCAB), labels, [[3, 2]])
    with pytest.raises(ValueError, match="row 0 position 5"):  # padding
        sequence_logps(torch.zeros(1, 6, VOCAB), torch.tensor([[-100, 5, 6, -100, 8, 9]]), [[3, 2]])
