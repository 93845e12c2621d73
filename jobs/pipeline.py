"""`ray job submit --working-dir . -- python jobs/pipeline.py CONFIG [key=value ...]`
(or `lmforge submit pipeline`)

Runs every stage of the pipeline in this one driver on the cluster the job runs on (RAY_ADDRESS), each
skipped when its output is up to date; run directly, it starts a local Ray.
"""

import sys
from pathlib import Path

# the submitted code, not a stale install
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
from lmforge.cli import run_job

if __name__ == "__main__":
    run_job("pipeline")
