"""init_ray: how the CLI starts or joins Ray (no Ray is started here: ray.init is replaced)."""

import ray

from lmforge.config import RayConfig
from lmforge.runtime import init_ray


def test_a_sized_local_ray_config_still_joins_a_running_ray_start_cluster(monkeypatch):
    calls = []

    def fake_init(**kwargs):
        calls.append(kwargs)
        if "num_cpus" in kwargs:  # what ray.init says when it finds a `ray start` cluster to join
            raise ValueError("When connecting to an existing cluster, num_cpus and num_gpus must not be "
                             "provided.")

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "cluster_resources", dict)
    init_ray(RayConfig(num_cpus=4))
    assert calls == [{"num_cpus": 4, "log_to_driver": True}, {"log_to_driver": True}]
