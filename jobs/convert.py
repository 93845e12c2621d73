"""`ray job submit --working-dir . --entrypoint-memory BYTES -- python jobs/convert.py CONFIG [key=value ...]`

Runs in the job's driver process, no Ray tasks: the node it lands on must see the checkpoint (shared
storage) and have ~4x the fp32 model in free RAM; --entrypoint-memory makes Ray place it on such a node,
--entrypoint-resources '{"big_memory": 1}' on a node started with that custom resource.
"""

import sys
from pathlib import Path

# the submitted code, not a stale install
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
from lmforge.cli import run_job

if __name__ == "__main__":
    run_job("convert")
