"""`ray job submit --working-dir . -- python jobs/prepare_pretrain.py CONFIG [key=value ...]`

Joins the cluster the job runs on (RAY_ADDRESS), or starts a local Ray when run directly.
"""

from lmforge.cli import run_job

if __name__ == "__main__":
    run_job("prepare-pretrain")
