"""A training checkpoint as convert sees it: where it is, what run wrote it, and its consolidated weights.

    <storage_path>/<run_name>/            the run directory
      run.json                            TrainConfig + TrainData, written by `lmforge pretrain/sft`
      checkpoint_*/                       one per save (Ray Train keeps the last K)
        trainer_state.json                step, epoch, ...
        latest                            DeepSpeed's tag, e.g. global_step20
        global_step20/                    one model-states and one optimizer-states file per rank

Unpickling: DeepSpeed 0.19.8's `zero_to_fp32` calls `torch.load(..., weights_only=False)` on every shard,
so a crafted checkpoint could run code. We load it with `TORCH_FORCE_WEIGHTS_ONLY_LOAD=1` (which overrides
an explicit weights_only=False) and allow only the two DeepSpeed classes its optimizer states pickle.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
import transformers

from lmforge.config import TrainConfig
from lmforge.train.checkpoint import STATE_FILE, read_state
from lmforge.train.data import TrainData
from lmforge.train.model import model_config
from lmforge.train.run_spec import read_run_spec

log = logging.getLogger(__name__)

# DeepSpeed's consolidation holds the fp32 partitions and the gathered state dict; we add the model and,
# when verifying, its reloaded copy. DESIGN.md measures ~4x the fp32 model size on one node.
RAM_FACTOR = 4


@dataclass(frozen=True)
class ZeroCheckpoint:
    """One `checkpoint_*` directory of an lmforge run, with the run's model, LoRA and tokenizer facts."""

    directory: Path
    tag: str  # DeepSpeed's tag, e.g. global_step20
    step: int
    train: TrainConfig
    data: TrainData

    @classmethod
    def locate(cls, path: str | Path) -> ZeroCheckpoint:
        """`path` is a checkpoint_* directory or a run directory (then its newest checkpoint);
        reads run.json."""
        path = Path(path).resolve()
        if not path.is_dir():
            raise FileNotFoundError(
                f"checkpoint {path}: no such directory (give a checkpoint_* dir or its run dir)"
            )
        directory = path if _is_checkpoint(path) else _newest_checkpoint(path)
        train, data = read_run_spec(directory.parent)
        state = read_state(directory)
        if not (directory / state.tag).is_dir():
            raise FileNotFoundError(f"checkpoint {directory}: {STATE_FILE} names step {state.step}, but "
                                    f"{state.tag}/ is missing; the copy is incomplete")
        return cls(directory=directory, tag=state.tag, step=state.step, train=train, data=data)

    @property
    def lora(self) -> bool:
        return self.train.lora.enabled

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The fp32 weights gathered from every rank's ZeRO shards (keys as the trained module names them)."""
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with deepspeed_weights_only():
            try:
                return get_fp32_state_dict_from_zero_checkpoint(str(self.directory), tag=self.tag)
            except pickle.UnpicklingError as exc:
                raise ValueError(f"checkpoint {self.directory / self.tag} holds pickled objects beyond "
                                 f"tensors and DeepSpeed's loss scaler and ZeRO stage; "
                                 f"refusing to unpickle it: {exc}") from None


def _is_checkpoint(path: Path) -> bool:
    return (path / STATE_FILE).is_file() or (path / "latest").is_file()


def _newest_checkpoint(run_dir: Path) -> Path:
    candidates = [d for d in run_dir.glob("checkpoint_*") if (d / STATE_FILE).is_file()]
    if not candidates:
        raise FileNotFoundError(f"checkpoint {run_dir}: neither a checkpoint (no {STATE_FILE} or latest) "
                                "nor a run directory with checkpoint_*/ inside; give one of those")
    return max(candidates, key=lambda d: (read_state(d).step, d.name))


@contextlib.contextmanager
def deepspeed_weights_only():
    """Make DeepSpeed's `torch.load(weights_only=False)` calls safe:
    tensors plus DeepSpeed's two plain classes."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals([LossScaler, DynamicLossScaler, ZeroStageEnum]):
            yield
    finally:
        if previous is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


def parameter_count(checkpoint: ZeroCheckpoint, trust_remote_code: bool) -> int:
    """Parameters of the run's model, counted on the meta device (no weights are built)."""
    config = model_config(checkpoint.train.model.model_copy(update={"trust_remote_code": trust_remote_code}),
                          checkpoint.data.vocab_size)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return sum(p.numel() for p in model.parameters())


def check_memory(parameters: int, where: Path) -> int:
    """Bytes the conversion needs (RAM_FACTOR x the fp32 model);
    raises MemoryError when fewer are available."""
    needed = RAM_FACTOR * 4 * parameters
    available = psutil.virtual_memory().available
    if needed > available:
        raise MemoryError(f"checkpoint {where}: converting {parameters / 1e9:.2f}B parameters needs about "
                          f"{needed / 1024**3:.1f} GiB of RAM ({RAM_FACTOR} x the fp32 model, for "
                          f"DeepSpeed's consolidation), but only {available / 1024**3:.1f} GiB is available; "
                          "run convert on a node with more memory, or free some")
    log.info("RAM: need ~%.2f GiB, %.2f GiB available", needed / 1024**3, available / 1024**3)
    return needed
