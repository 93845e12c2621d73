"""Preference losses on packed rows: per-sequence log-probs, then DPO, IPO, SimPO, ORPO or KTO.

A micro-batch is packed like SFT rows (row_packing.py, batches.py); `kinds` says what each sequence is,
in row order (row 0's sequences, then row 1's, ...), two by two:

    paired losses (dpo ipo simpo orpo):   chosen_1 rejected_1 chosen_2 rejected_2 ...   kinds 0 1 0 1 ...
    kto:                                  sample_1 kl_1       sample_2 kl_2       ...   kinds d 2 d 2 ...
                                          (d = 0 desirable, 1 undesirable; kl_i = prompt_i with another
                                          sample's completion: the KL estimate's sequence)

Per sequence, over its trained tokens (label != -100): logp = sum of log p(label), m = logp / tokens,
r = logp(policy) - logp(reference). With s = sigmoid and e = label_smoothing:

    dpo    -(1 - e) log s(beta (r_c - r_r)) - e log s(-beta (r_c - r_r))               rewards beta r
    ipo    ((r_c / tokens_c - r_r / tokens_r) - 1 / (2 beta))^2                         rewards beta r
    simpo  -(1 - e) log s(beta (m_c - m_r) - gamma) - e log s(gamma - beta (m_c - m_r))  rewards beta m
    orpo   nll(chosen) - beta log s(odds_c - odds_r), odds = m - log(1 - exp(m))         rewards beta m
    kto    w_d (1 - s(beta (r - z))) if desirable, w_u (1 - s(beta (z - r))) if not       rewards beta r
           z = max(0, mean over all ranks of logp(policy) - logp(reference) on the kl sequences)

The formulas, token averaging and rewards are TRL 1.16's (tests/train/test_preference_losses.py checks
each against TRL): ipo is DPOTrainer's loss_type "ipo", which averages the log-ratios over the answer's
tokens (a choice TRL says the IPO authors confirmed); dpo is its "sigmoid" at e = 0, and with e > 0
conservative DPO, which TRL 1.16's DPOTrainer no longer has (its "sigmoid" ignores label_smoothing):
CPOTrainer's label-smoothed "sigmoid" on the log-ratios. simpo is CPOTrainer's "simpo" (cpo_alpha 0),
orpo ORPOTrainer.odds_ratio_loss plus the chosen NLL, kto KTOTrainer's "kto". A micro-batch's loss is
the mean over its pairs (kto: samples). `sft_weight` w > 0 adds w * nll(chosen) to dpo, ipo and simpo
(RPO; DPOTrainer's loss_type ["sigmoid", "sft"] with loss_weights [1, w]). Without it, DPO of the tiny
test model (tests/train/test_align.py) reached reward accuracy 1.0 in 3 steps by pushing the rejected
answers down, while the chosen ones stayed unlikely and greedy answers degraded.

Two differences, on purpose: orpo's NLL is over the tokens the data labels (the answer; TRL's covers
the prompt too), and the logps_* metrics are per-sequence sums for every loss (TRL logs SimPO's and
ORPO's per-token means).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.config import PreferenceConfig
from lmforge.data.text.chat_render import IGNORE_INDEX

CHOSEN = 0  # kto: desirable
REJECTED = 1  # kto: undesirable
KL_SEQUENCE = 2  # kto: the sequence after each sample, for the KL estimate

# metric -> the count its sum (`<metric>_sum`) is divided by; reward_margin is chosen's mean - rejected's
_MEAN_OF = {"rewards_chosen": "chosen_count", "rewards_rejected": "rejected_count",
            "reward_accuracy": "chosen_count", "logps_chosen": "chosen_count",
            "logps_rejected": "rejected_count", "nll": "nll_tokens", "kl": "kl_count"}


@dataclass(frozen=True)
class SequenceLogps:
    """Per sequence, in row order: `sum` of log p(label) over its trained tokens (float32), and `tokens`."""

    sum: torch.Tensor
    tokens: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        """Log-prob per trained token (0 for a sequence without trained tokens)."""
        return self.sum / self.tokens.clamp(min=1)


class PreferenceLosses(NamedTuple):
    """Per-example losses (pairs; kto: samples) and the detached rewards of the chosen and rejected sides."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def sequence_logps(
    logits: torch.Tensor, labels: torch.Tensor, boundaries: Sequence[Sequence[int]]
) -> SequenceLogps:
    """(rows, length, vocab) logits of packed rows, their labels, each row's sequence lengths in order
    (padding after the last is no sequence) -> log-probs of every sequence, row after row.

    Position t is scored on labels[t + 1]. Only trained positions are gathered and taken to float32
    before the log-softmax, so no (rows, length, vocab) float32 copy is made.
    Raises ValueError when a trained label lies in padding or on a sequence's first token.
    """
    owner, scoreable = _sequence_layout(boundaries, labels.shape[1])
    owner, scoreable = owner.to(labels.device), scoreable.to(labels.device)
    trained = labels != IGNORE_INDEX
    misplaced = trained & ~scoreable
    if bool(misplaced.any()):  # one host sync: a misplaced label would mix two sequences
        row, position = misplaced.nonzero()[0].tolist()
        raise ValueError(f"row {row} position {position}: a trained label outside a sequence or on its "
                         "first token (the first label of every packed sequence must be -100)")
    targets = trained[:, 1:]
    token_logps = -F.cross_entropy(
        logits[:, :-1][targets].float(), labels[:, 1:][targets], reduction="none"
    )
    owners = owner[:, 1:][targets]
    count = sum(len(lens) for lens in boundaries)
    sums = torch.zeros(count, dtype=torch.float32, device=logits.device).index_add(0, owners, token_logps)
    return SequenceLogps(sum=sums, tokens=torch.bincount(owners, minlength=count))


def mean_nll(logps: SequenceLogps, which: torch.Tensor | slice) -> torch.Tensor:
    """Negative log-likelihood per trained token over the sequences `which` selects (a mask or indices)."""
    return -logps.sum[which].sum() / logps.tokens[which].sum().clamp(min=1)


def dpo_loss(
    chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, *, beta: float, label_smoothing: float
) -> PreferenceLosses:
    """DPO on each pair's log-ratios logp(policy) - logp(reference); label_smoothing > 0: conservative DPO."""
    logits = beta * (chosen_logratios - rejected_logratios)
    losses = -F.logsigmoid(logits) * (1 - label_smoothing) - F.logsigmoid(-logits) * label_smoothing
    return PreferenceLosses(losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach())


def ipo_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
    *,
    beta: float,
) -> PreferenceLosses:
    """IPO on log-ratios averaged over each answer's tokens, as TRL does; the rewards use the sums."""
    delta = chosen_logratios / chosen_tokens.clamp(min=1) - rejected_logratios / rejected_tokens.clamp(min=1)
    losses = (delta - 1 / (2 * beta)) ** 2
    return PreferenceLosses(losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach())


def simpo_loss(
    chosen_mean_logps: torch.Tensor,
    rejected_mean_logps: torch.Tensor,
    *,
    beta: float,
    gamma: float,
    label_smoothing: float,
) -> PreferenceLosses:
    """SimPO on the policy's per-token mean log-probs: no reference; rewards beta * mean log-prob."""
    logits = beta * ((chosen_mean_logps - rejected_mean_logps) - gamma / beta)
    losses = -F.logsigmoid(logits) * (1 - label_smoothing) - F.logsigmoid(-logits) * label_smoothing
    return PreferenceLosses(losses, beta * chosen_mean_logps.detach(), beta * rejected_mean_logps.detach())


def orpo_loss(
    chosen_mean_logps: torch.Tensor, rejected_mean_logps: torch.Tensor, *, beta: float
) -> PreferenceLosses:
    """ORPO's odds-ratio term -beta log s(log odds ratio) on per-token mean log-probs (add the chosen NLL)."""
    log_odds = (chosen_mean_logps - rejected_mean_logps) - (
        _log1mexp(chosen_mean_logps) - _log1mexp(rejected_mean_logps)
    )
    losses = -beta * F.logsigmoid(log_odds)
    return PreferenceLosses(losses, beta * chosen_mean_logps.detach(), beta * rejected_mean_logps.detach())


def kto_loss(
    logratios: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor,
    *,
    beta: float,
    desirable_weight: float,
    undesirable_weight: float,
) -> PreferenceLosses:
    """KTO per sample (weighted); `kl` is the KL estimate averaged over ranks, clamped at 0 here as TRL does.

    The rewards are those of the desirable and of the undesirable samples (either may be empty).
    """
    kl = kl.detach().clamp(min=0)
    losses = torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (logratios - kl))),
        undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratios))),
    )
    rewards = beta * logratios.detach()
    return PreferenceLosses(losses, rewards[desirable], rewards[~desirable])


def kto_local_kl(policy: SequenceLogps, reference: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
    """This rank's KL estimate: mean of logp(policy) - logp(reference) over its KL sequences, detached.

    Average it over the data-parallel ranks (all-reduce) and pass the result to `preference_loss`. No
    gradient flows through it (TRL scores the KL sequences under no_grad).
    """
    kl_sequences = kinds.to(policy.sum.device) == KL_SEQUENCE
    return (policy.sum[kl_sequences] - reference.float()[kl_sequences]).mean().detach()


def preference_loss(
    settings: PreferenceConfig,
    policy: SequenceLogps,
    reference: torch.Tensor | None,
    kinds: torch.Tensor,
    kl: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The micro-batch's loss and its metric sums.

    `policy`: the policy's log-probs of every sequence; `reference`: the reference model's per-sequence
    sums (None for simpo and orpo); `kinds`: what each sequence is (module doc); `kl` (kto only): the
    all-reduced `kto_local_kl`. The metrics are detached 0-d float32 sums and counts: add them over
    ranks and accumulation steps, then `metric_means`.
    """
    kinds = _checked_kinds(settings, policy, reference, kinds, kl)
    if settings.loss == "kto":
        return _kto(settings, policy, reference, kinds, kl)
    first, second = slice(0, None, 2), slice(1, None, 2)  # chosen, rejected
    if settings.loss == "dpo":
        logratios = policy.sum - reference.float()
        out = dpo_loss(logratios[first], logratios[second], beta=settings.beta,
                       label_smoothing=settings.label_smoothing)
    elif settings.loss == "ipo":
        logratios = policy.sum - reference.float()
        out = ipo_loss(logratios[first], logratios[second], policy.tokens[first], policy.tokens[second],
                       beta=settings.beta)
    elif settings.loss == "simpo":
        out = simpo_loss(policy.mean[first], policy.mean[second], beta=settings.beta,
                         gamma=settings.simpo_gamma, label_smoothing=settings.label_smoothing)
    else:
        out = orpo_loss(policy.mean[first], policy.mean[second], beta=settings.beta)
    loss = out.losses.mean()
    sums = _side_sums(out, policy.sum[first], policy.sum[second])
    sums["reward_accuracy_sum"] = (out.chosen_rewards > out.rejected_rewards).float().sum()
    if settings.loss == "orpo" or settings.sft_weight:
        nll = mean_nll(policy, first)
        loss = loss + (1.0 if settings.loss == "orpo" else settings.sft_weight) * nll
        sums["nll_sum"] = -policy.sum[first].detach().sum()
        sums["nll_tokens"] = policy.tokens[first].sum().float()
    return loss, sums


def metric_means(sums: Mapping[str, torch.Tensor | float]) -> dict[str, float]:
    """Metric sums added over ranks and steps -> rewards_chosen, rewards_rejected, reward_margin,
    reward_accuracy, logps_chosen, logps_rejected (+ nll, kl): means over what the batch had.

    A metric of a side the batch did not have (kto without desirable samples) is left out, never NaN.
    """
    means = {}
    for name, count in _MEAN_OF.items():
        if f"{name}_sum" in sums and float(sums[count]) > 0:
            means[name] = float(sums[f"{name}_sum"]) / float(sums[count])
    if "rewards_chosen" in means and "rewards_rejected" in means:
        means["reward_margin"] = means["rewards_chosen"] - means["rewards_rejected"]
    return means


def _kto(
    settings: PreferenceConfig,
    policy: SequenceLogps,
    reference: torch.Tensor,
    kinds: torch.Tensor,
    kl: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    samples = slice(0, None, 2)
    desirable = kinds[samples] == CHOSEN
    logps = policy.sum[samples]
    out = kto_loss(logps - reference.float()[samples], desirable, kl, beta=settings.beta,
                   desirable_weight=settings.desirable_weight, undesirable_weight=settings.undesirable_weight)
    sums = _side_sums(out, logps[desirable], logps[~desirable])
    sums["kl_sum"] = kl.detach().float().clamp(min=0).reshape(())
    sums["kl_count"] = torch.ones((), device=logps.device)
    return out.losses.mean(), sums


def _side_sums(
    out: PreferenceLosses, chosen_logps: torch.Tensor, rejected_logps: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Counts and sums of the rewards and log-probs of each side (float32, so one all-reduce takes them)."""
    return {
        "chosen_count": torch.tensor(float(len(chosen_logps)), device=chosen_logps.device),
        "rejected_count": torch.tensor(float(len(rejected_logps)), device=chosen_logps.device),
        "rewards_chosen_sum": out.chosen_rewards.sum(),
        "rewards_rejected_sum": out.rejected_rewards.sum(),
        "logps_chosen_sum": chosen_logps.detach().sum(),
        "logps_rejected_sum": rejected_logps.detach().sum(),
    }


def _checked_kinds(
    settings: PreferenceConfig,
    policy: SequenceLogps,
    reference: torch.Tensor | None,
    kinds: torch.Tensor,
    kl: torch.Tensor | None,
) -> torch.Tensor:
    """`kinds` on the log-probs' device, once the inputs are known to fit the loss (else ValueError)."""
    loss = settings.loss
    if settings.needs_reference != (reference is not None):
        raise ValueError(f"preference loss {loss}: " + ("pass the reference model's log-probs"
                         if settings.needs_reference else "is reference-free: pass reference=None"))
    if (loss == "kto") != (kl is not None):
        raise ValueError(f"preference loss {loss}: kl is " + ("required (the all-reduced kto_local_kl)"
                         if loss == "kto" else "only for kto"))
    count = len(policy.sum)
    if len(kinds) != count or (reference is not None and len(reference) != count):
        raise ValueError(f"preference loss {loss}: {count} sequences, {len(kinds)} kinds"
                         + ("" if reference is None else f", {len(reference)} reference log-probs"))
    kinds = kinds.to(policy.sum.device)
    first, second = kinds[0::2], kinds[1::2]
    if loss == "kto":
        fits = ((first == CHOSEN) | (first == REJECTED)).all() & (second == KL_SEQUENCE).all()
        layout = "sample (0 desirable, 1 undesirable) then its KL sequence (2)"
    else:
        fits = (first == CHOSEN).all() & (second == REJECTED).all()
        layout = "chosen (0) then rejected (1)"
    if count == 0 or count % 2 or not bool(fits):
        raise ValueError(f"preference loss {loss}: kinds {kinds.tolist()} are not pairs of {layout}")
    return kinds


def _sequence_layout(boundaries: Sequence[Sequence[int]], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, length) index of each token's sequence, counted over all rows (padding: 0), and whether a
    token may carry a trained label: inside a sequence and not its first token."""
    owner = np.zeros((len(boundaries), length), dtype=np.int64)
    scoreable = np.zeros((len(boundaries), length), dtype=bool)
    first = 0
    for row, lens in enumerate(boundaries):
        lens = np.asarray(lens, dtype=np.int64)
        if lens.sum() > length or (lens < 0).any():
            raise ValueError(f"row {row}: sequence lengths {lens.tolist()} do not fit its {length} tokens")
        used = int(lens.sum())
        owner[row, :used] = first + np.repeat(np.arange(lens.size), lens)
        scoreable[row, :used] = True
        scoreable[row, (np.cumsum(lens) - lens)[lens > 0]] = False
        first += lens.size
    return torch.from_numpy(owner), torch.from_numpy(scoreable)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, TRL's form: split at -log 2 to stay accurate on both sides."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))
