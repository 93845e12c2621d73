"""Starting or joining Ray, the same way for the CLI, `jobs/` and tests."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import ray
import ray.data

import lmforge
from lmforge.config import RayConfig

log = logging.getLogger(__name__)


def init_ray(cfg: RayConfig) -> None:
    """Join the cluster named by cfg.address or RAY_ADDRESS (set under `ray job submit`),
    else start a local Ray."""
    configure_ray_data()
    if ray.is_initialized():
        return
    kwargs = {}
    if cfg.address or os.environ.get("RAY_ADDRESS"):
        # Workers on the cluster import the same lmforge code as this driver (a submitted job's
        # working dir), not whatever version the nodes have installed.
        kwargs["address"] = cfg.address
        kwargs["runtime_env"] = {"py_modules": [str(Path(lmforge.__file__).parent)]}
    else:  # only a new local Ray takes resource sizes; Ray ignores them when RAY_ADDRESS joins a cluster
        if cfg.num_cpus:
            kwargs["num_cpus"] = cfg.num_cpus
        if cfg.object_store_memory_mb:
            kwargs["object_store_memory"] = cfg.object_store_memory_mb * 1024**2
    try:
        ray.init(**kwargs, log_to_driver=True)
    except ValueError as exc:  # ray.init() joins a `ray start` cluster of this machine, which takes no sizes
        if not str(exc).startswith("When connecting to an existing cluster"):
            raise
        log.warning("joining the running Ray of this machine; ray.num_cpus and ray.object_store_memory_mb "
                    "(sizes of a new local Ray) are ignored")
        ray.init(log_to_driver=True)
    log.info("Ray resources: %s", ray.cluster_resources())


def configure_ray_data() -> None:
    """Ray Data settings for our groupbys: a handful of large groups, not thousands of small ones."""
    context = ray.data.DataContext.get_current()
    # The default hash shuffle starts aggregator actors per operator (seconds each on a small
    # node); the sort-based shuffle runs as plain tasks.
    context.shuffle_strategy = ray.data.context.ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
