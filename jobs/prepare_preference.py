"""`ray job submit --working-dir . -- python jobs/prepare_preference.py CONFIG [key=value ...]`

Joins the cluster the job runs on (RAY_ADDRESS), or starts a local Ray when run directly.
"""

import sys
from pathlib import Path

# the submitted code, not a stale install
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
from lmforge.cli import run_job

if __name__ == "__main__":
    run_job("prepare-preference")
