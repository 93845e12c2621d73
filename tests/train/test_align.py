"""`lmforge align` end to end: real Ray Train + DeepSpeed ZeRO-3 on CPU (gloo), 2 workers, tiny models.

The policy starts from `chat_model_dir` (a converted tiny Llama, the "SFT model"), which is also the
reference. The toy preference set has a learnable trait: every chosen answer is the same cautious
sentence (TRAIT), every rejected one is the dataset's own answer. Runs are module fixtures (~30 s each):

    dpo         full DPO, reference log-probs precomputed by prepare-preference, 2 workers
    in_loop     the same run for 2 steps with the reference in the loop (a frozen ZeRO-3 copy)
    lora        DPO with LoRA, reference = the adapters disabled; lora_resumed: stopped at 4 on 2 workers,
                rerun on 1 worker
    losses      ipo, simpo, orpo on the pairs, kto on kto_en_demo.json: 3 steps each, 1 worker
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from training_helpers import checkpoints, max_difference, metrics, weights

from lmforge.config import AlignTrainConfig, ConvertConfig, PreferenceDataConfig
from lmforge.manifest import Manifest

TRAIT = "建议您及时就医，遵医嘱用药。"
PAIRS = 240
EVAL_ROWS = 4


def _questions(shared_data: Path, count: int = PAIRS) -> list[tuple[str, str]]:
    """(question, the dataset's answer) of the medical SFT sample, cut short (a tiny model, short rows)."""
    found = []
    with (shared_data / "sft" / "medical_sft_1K_format.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            turns = json.loads(line)["conversations"]
            question, answer = turns[0]["value"][:30], turns[1]["value"][:30]
            if question and answer and answer != TRAIT:
                found.append((question, answer))
            if len(found) == count:
                return found
    raise AssertionError("the medical sample has too few records")


def _greedy_answers(model_dir: Path, questions: list[str]) -> list[str]:
    """The model's own greedy answers (24 tokens at most), as `lmforge generate` gives them."""
    import transformers

    from lmforge.convert.generate import chat_prompt

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    answers = []
    for question in questions:
        ids = tokenizer(chat_prompt(tokenizer, question), return_tensors="pt", add_special_tokens=False)
        out = model.generate(**ids, max_new_tokens=24, do_sample=False)
        answers.append(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    return answers


@pytest.fixture(scope="module")
def trait_pairs(shared_data, chat_model_dir, tmp_path_factory) -> Path:
    """Rejected: the SFT model's own greedy answer (what `lmforge synth` recipe preference pairs against
    the reference answer), so DPO must move the model's greedy choice, not only push unlikely text down."""
    questions = [q for q, _ in _questions(shared_data)]
    path = tmp_path_factory.mktemp("trait") / "trait_pairs.jsonl"
    answers = _greedy_answers(chat_model_dir, questions)
    records = [{"question": q, "chosen": TRAIT, "rejected": a or "。"}
               for q, a in zip(questions, answers, strict=True)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _prepare(sources: list[dict], model_dir: Path, out: Path, reference: bool) -> Path:
    from lmforge.align.prepare import run_prepare_preference

    run_prepare_preference(PreferenceDataConfig.model_validate({
        "tokenizer": str(model_dir), "output_dir": str(out), "max_length": 96, "sources": sources,
        "reference": {"model_dir": str(model_dir) if reference else None, "workers": 2},
    }))
    return out


@pytest.fixture(scope="module")
def pair_data(ray_local, chat_model_dir, trait_pairs, tmp_path_factory) -> Path:  # noqa: ARG001 - Ray first
    return _prepare([{"path": str(trait_pairs)}], chat_model_dir, tmp_path_factory.mktemp("pairs"), True)


@pytest.fixture(scope="module")
def kto_data(ray_local, chat_model_dir, shared_data, tmp_path_factory) -> Path:  # noqa: ARG001 - Ray first
    return _prepare([{"path": str(shared_data / "preference" / "kto_en_demo.json")}], chat_model_dir,
                    tmp_path_factory.mktemp("kto"), False)


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("align-runs")


def align_config(storage: Path, name: str, data_dir: Path, model_dir: Path, **fields) -> AlignTrainConfig:
    """fp32 ZeRO-3 (resume and reference checks must be exact), 2 workers x micro batch 1 x accumulation 2."""
    return AlignTrainConfig.model_validate({
        "run_name": name, "storage_path": str(storage),
        "model": {"path": str(model_dir)},
        "data": {"dir": str(data_dir), "eval_rows": EVAL_ROWS},
        "zero": {"stage": 3, "precision": "fp32"},
        "optim": {"lr": 1e-3, "schedule": "constant"},
        "num_workers": 2, "global_batch_size": 4, "micro_batch_size": 1, "max_steps": 20,
        "eval_every": 10, "checkpoint": {"every_steps": 20, "keep_last": 1},
        **fields,
    })


def _align(cfg: AlignTrainConfig) -> Manifest:
    from lmforge.train.run import run_align

    return run_align(cfg)


DPO = {"preference": {"beta": 0.1, "sft_weight": 1.0}, "optim": {"lr": 5e-3, "schedule": "constant"}}


@pytest.fixture(scope="module")
def dpo(storage, pair_data, chat_model_dir) -> AlignTrainConfig:
    # sft_weight: DPO alone reaches reward accuracy 1.0 by pushing the model's own answers down, and the
    # chosen answer stays unlikely; with the chosen NLL added (RPO) it becomes the greedy one
    cfg = align_config(storage, "dpo", pair_data, chat_model_dir, **DPO, max_steps=40, eval_every=20,
                       checkpoint={"every_steps": 40, "keep_last": 1})
    _align(cfg)
    return cfg


@pytest.fixture(scope="module")
def in_loop(storage, pair_data, chat_model_dir) -> AlignTrainConfig:
    """The dpo run's first 2 steps (same settings, rows and updates) with a frozen copy as the reference."""
    cfg = align_config(storage, "in_loop", pair_data, chat_model_dir, **DPO, reference="in_loop", max_steps=2,
                       checkpoint={"every_steps": 2, "keep_last": 1})
    _align(cfg)
    return cfg


def test_prepared_pairs_carry_reference_logps(pair_data, chat_model_dir):
    rows = Manifest.read(pair_data).outputs
    assert rows["reference"]["model_dir"] == str(chat_model_dir.resolve())
    table = pq.read_table(next(pair_data.glob("rows-*.parquet")))
    for kinds, ref_logps in zip(table.column("kinds").to_pylist(), table.column("ref_logps").to_pylist(),
                                strict=True):
        assert len(kinds) == len(ref_logps) and all(math.isfinite(x) and x < 0 for x in ref_logps)


def test_dpo_learns_the_trait_of_the_chosen_answers(dpo):
    logged = metrics(dpo)
    assert [row["step"] for row in logged] == list(range(1, 41))
    first, last = logged[0], logged[-1]
    for name in ("loss", "rewards_chosen", "rewards_rejected", "reward_margin", "reward_accuracy",
                 "logps_chosen", "logps_rejected", "tokens_per_s", "lr", "grad_norm",
                 "eval_loss", "eval_reward_accuracy", "eval_reward_margin"):
        assert name in last, name
    # step 1 is computed before any update: the policy is the reference, so every reward is 0
    assert abs(first["rewards_chosen"]) < 1e-5 and abs(first["rewards_rejected"]) < 1e-5
    assert last["eval_reward_accuracy"] > 0.9 and last["eval_reward_margin"] > 0
    assert last["loss"] < first["loss"]
    run_dir = Path(dpo.storage_path) / dpo.run_name
    assert (run_dir / "rewards.png").is_file() and (run_dir / "loss.png").is_file()


def test_precomputed_reference_equals_the_in_loop_one(dpo, in_loop):
    """Both runs read the same rows from the same starting policy with the same settings: rewards (policy -
    reference) differ only by how the reference was computed (prepare-preference's pass vs a frozen ZeRO-3
    copy)."""
    precomputed, loop = metrics(dpo)[0], metrics(in_loop)[0]
    for name in ("logps_chosen", "logps_rejected", "rewards_chosen", "rewards_rejected"):
        assert abs(precomputed[name] - loop[name]) <= 1e-5, name
    assert abs(loop["rewards_chosen"]) <= 1e-5 and abs(loop["rewards_rejected"]) <= 1e-5
    # step 2, after one identical update: the policy has moved away from the reference, so the rewards are
    # no longer 0 and would differ if either reference moved with the policy (or were the policy itself)
    precomputed, loop = metrics(dpo)[1], metrics(in_loop)[1]
    assert abs(precomputed["rewards_chosen"]) > 1e-3 and abs(precomputed["rewards_rejected"]) > 1e-3
    for name in ("logps_chosen", "logps_rejected", "rewards_chosen", "rewards_rejected"):
        assert abs(precomputed[name] - loop[name]) <= 1e-4, (name, precomputed[name], loop[name])


def test_the_aligned_model_converts_and_answers_with_the_trait(dpo, shared_data, chat_model_dir, tmp_path):
    from lmforge.convert.convert import run_convert
    from lmforge.convert.generate import stream_hf

    out = tmp_path / "aligned"
    run_convert(ConvertConfig(checkpoint=str(Path(dpo.storage_path) / dpo.run_name), output_dir=str(out),
                              dtype="fp32"))
    questions = [q for q, _ in _questions(shared_data, PAIRS + 3)[PAIRS:]]  # not in the training pairs
    answers = ["".join(stream_hf(out, question, max_new_tokens=24)) for question in questions]
    # the trait's opening word and its key word (a 2-layer model's byte-level answers garble some characters:
    # after 40 steps they read like '建议您�议悱医，遵医嘱用药')
    assert all(answer.startswith("建议") and "医" in answer for answer in answers), answers
    before = _greedy_answers(chat_model_dir, questions)
    assert not any(answer.startswith("建议") for answer in before), before


@pytest.fixture(scope="module")
def lora(storage, pair_data, chat_model_dir) -> AlignTrainConfig:
    cfg = align_config(storage, "lora", pair_data, chat_model_dir, max_steps=8, eval_every=0,
                       reference="in_loop", lora={"enabled": True, "r": 4},
                       checkpoint={"every_steps": 4, "keep_last": 2})
    _align(cfg)
    return cfg


@pytest.fixture(scope="module")
def lora_resumed(storage, pair_data, chat_model_dir) -> AlignTrainConfig:
    fields = {"max_steps": 8, "eval_every": 0, "reference": "in_loop", "lora": {"enabled": True, "r": 4},
              "checkpoint": {"every_steps": 4, "keep_last": 2}}
    cfg = align_config(storage, "lora_resumed", pair_data, chat_model_dir, stop_after_step=4, **fields)
    _align(cfg)
    _align(align_config(storage, "lora_resumed", pair_data, chat_model_dir, num_workers=1, **fields))
    return cfg


def test_lora_dpo_uses_the_disabled_adapters_as_reference(lora):
    first = metrics(lora)[0]
    assert abs(first["loss"] - math.log(2)) < 1e-5  # adapters start at zero: policy == reference
    assert metrics(lora)[-1]["reward_margin"] > 0


def test_a_lora_dpo_run_stopped_on_2_workers_and_resumed_on_1_reaches_the_uninterrupted_weights(
        lora, lora_resumed):
    assert [row["step"] for row in metrics(lora_resumed)] == list(range(1, 9))
    assert max_difference(weights(checkpoints(lora_resumed)[8]), weights(checkpoints(lora)[8])) <= 1e-5


@pytest.mark.parametrize("loss", ["ipo", "simpo", "orpo", "kto"])
def test_each_loss_trains(loss, storage, pair_data, kto_data, chat_model_dir):
    data = kto_data if loss == "kto" else pair_data
    cfg = align_config(storage, f"loss-{loss}", data, chat_model_dir, max_steps=3, num_workers=1,
                       global_batch_size=2, micro_batch_size=1, eval_every=0,
                       preference={"loss": loss, "beta": 0.1})
    _align(cfg)
    logged = metrics(cfg)
    assert [row["step"] for row in logged] == [1, 2, 3]
    assert all(math.isfinite(row["loss"]) for row in logged)
    extra = {"orpo": "nll", "kto": "kl"}.get(loss)
    if extra:
        assert extra in logged[-1]


def test_errors_name_what_to_change(storage, kto_data, chat_model_dir, sft_data):
    with pytest.raises(ValueError, match="holds sft data; `lmforge align` needs the output of "
                                         "prepare-preference"):
        _align(align_config(storage, "e1", sft_data, chat_model_dir))
    with pytest.raises(ValueError, match="holds KTO samples; preference.loss dpo needs pairs"):
        _align(align_config(storage, "e2", kto_data, chat_model_dir))
    with pytest.raises(ValueError, match="no precomputed reference log-probs"):
        _align(align_config(storage, "e3", kto_data, chat_model_dir, reference="precomputed",
                            preference={"loss": "kto"}))
