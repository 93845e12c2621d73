"""Training metrics: one JSON line and TensorBoard scalars per log step, and a loss curve at the end.

Only rank 0 writes. Ray Train shows the same numbers through `ray.train.report`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


class MetricsLog:
    """Appends to `metrics.jsonl` and `tensorboard/` in the run directory (a resumed run continues them)."""

    def __init__(self, run_dir: str | Path, enabled: bool, total_steps: int | None = None):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.total_steps = total_steps
        self._tensorboard = None
        self._first = None  # (time, step) of the first write, for the ETA
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8") as sink:
            sink.write(json.dumps({"step": step, **metrics}) + "\n")
        for name, value in metrics.items():
            self._tensorboard.add_scalar(name, value, step)
        self._tensorboard.flush()
        print(self.progress_line(step, metrics), flush=True)  # the driver's console and the job's log

    def progress_line(self, step: int, metrics: dict[str, float]) -> str:
        """`step 12/20 loss 3.2104 eval_loss 3.4 tokens/s 5120 eta 0:01:20`:
        ETA from the pace since the first line."""
        now = time.monotonic()
        if self._first is None:
            self._first = (now, step)
        parts = [f"step {step}/{self.total_steps or '?'}"]
        shown = ("loss", "eval_loss", "reward_accuracy", "reward_margin", "lr")  # rewards: align runs only
        parts += [f"{name} {metrics[name]:.4g}" for name in shown if name in metrics]
        if "tokens_per_s" in metrics:
            parts.append(f"tokens/s {metrics['tokens_per_s']:.0f}")
        started, first_step = self._first
        if self.total_steps and step > first_step:
            remaining = (self.total_steps - step) * (now - started) / (step - first_step)
            parts.append(f"eta {time.strftime('%H:%M:%S', time.gmtime(remaining))}")
        return " ".join(parts)

    def close(self) -> None:
        if self.enabled:
            self._tensorboard.close()
            plot_loss(self.run_dir / "metrics.jsonl", self.run_dir / "loss.png")
            plot_rewards(self.run_dir / "metrics.jsonl", self.run_dir / "rewards.png")


def plot_loss(metrics_file: Path, png: Path) -> None:
    """loss (and eval_loss, when logged) against step."""
    _plot(metrics_file, png, [("loss", ("loss", "eval_loss"))])


def plot_rewards(metrics_file: Path, png: Path) -> None:
    """align: chosen and rejected rewards with their margin, and reward accuracy, against step
    (nothing for runs that log no rewards)."""
    _plot(metrics_file, png, [
        ("reward", ("rewards_chosen", "rewards_rejected", "reward_margin", "eval_reward_margin")),
        ("reward accuracy", ("reward_accuracy", "eval_reward_accuracy")),
    ])


def _plot(metrics_file: Path, png: Path, panels: list[tuple[str, tuple[str, ...]]]) -> None:
    """One panel per (y label, metric names), each metric against step; no file when none was logged."""
    rows = [json.loads(line) for line in metrics_file.read_text(encoding="utf-8").splitlines() if line]
    if not any(name in row for _, names in panels for name in names for row in rows):
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4), squeeze=False)
    for axis, (label, names) in zip(axes[0], panels, strict=True):
        for name in names:
            points = [(r["step"], r[name]) for r in rows if name in r]
            if points:
                axis.plot(*zip(*points, strict=True), label=name,
                          marker="o" if name.startswith("eval_") else None)
        axis.set_xlabel("step")
        axis.set_ylabel(label)
        axis.legend()
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(png, dpi=100)
    plt.close(figure)


def model_flops_utilisation(
    tokens_per_s: float, flops_per_token: float, peak_flops: float | None
) -> float | None:
    """Achieved model FLOP/s over the hardware peak (None when the peak is not known)."""
    return tokens_per_s * flops_per_token / peak_flops if peak_flops else None
