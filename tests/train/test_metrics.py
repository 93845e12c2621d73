"""The training log a person reads: console progress lines and the metrics file."""

from __future__ import annotations

import json

from lmforge.train.metrics import MetricsLog


def test_progress_lines_show_step_of_total_loss_throughput_and_an_eta_after_the_first(tmp_path, capsys):
    log = MetricsLog(tmp_path, enabled=True, total_steps=20)
    log.write(1, {"loss": 7.25, "lr": 1e-3, "tokens_per_s": 5120.4})
    log.write(2, {"loss": 7.0, "lr": 1e-3, "tokens_per_s": 5000.0, "eval_loss": 7.1})
    log.close()
    first, second = capsys.readouterr().out.splitlines()
    assert first == "step 1/20 loss 7.25 lr 0.001 tokens/s 5120"
    assert second.startswith("step 2/20 loss 7 eval_loss 7.1 lr 0.001 tokens/s 5000 eta ")
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
    ]
    assert (tmp_path / "loss.png").is_file()


def test_other_ranks_write_nothing(tmp_path, capsys):
    log = MetricsLog(tmp_path / "run", enabled=False, total_steps=20)
    log.write(1, {"loss": 1.0})
    log.close()
    assert capsys.readouterr().out == "" and not (tmp_path / "run").exists()
