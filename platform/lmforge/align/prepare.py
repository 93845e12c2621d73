"""`lmforge prepare-preference`: preference datasets -> packed rows of whole pairs
(lmforge.data.stages.prepare_preference), then, with `reference.model_dir`, the reference model's
log-probs of every sequence (lmforge.align.reference), both inside one staged output directory."""

from __future__ import annotations

from lmforge.align.reference import add_reference_logps
from lmforge.config import PreferenceDataConfig
from lmforge.data.stages.prepare_preference import check_inputs, prepare_preference_rows
from lmforge.manifest import Manifest
from lmforge.output_dir import staged_output_dir


def run_prepare_preference(cfg: PreferenceDataConfig) -> Manifest:
    files, renderer = check_inputs(cfg)  # path, tokenizer and template errors stop us before any work
    with staged_output_dir(cfg.output_dir) as out:
        manifest = prepare_preference_rows(cfg, out, files, renderer)
        if cfg.reference.model_dir:
            manifest = add_reference_logps(cfg, out)
    return manifest
