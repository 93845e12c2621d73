"""What operators probe and chart: Serve's proxy health, the app's /health, Serve's Prometheus counters."""

from __future__ import annotations

import time

import httpx
from served_app import MODEL, ask


def _metrics_url(ray) -> str:
    """The node's Prometheus endpoint, where Ray exports
    ray_serve_* (the dashboard's Metrics tab reads it too)."""
    node = next(n for n in ray.nodes() if n["Alive"])
    return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"


def _counter(text: str, name: str, label: str) -> float:
    """Sum of the samples of counter `name` whose labels contain `label` (e.g. 'route="/v1/models"')."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and label in line)


def test_proxy_health_and_routes_answer_without_a_key(api_url):
    base = api_url.removesuffix("/v1")
    assert httpx.get(f"{base}/-/healthz", timeout=30).status_code == 200
    assert httpx.get(f"{base}/-/routes", timeout=30).json() == {"/": "lmforge-chat"}


def test_health_says_ok_with_the_running_replica_of_each_model_without_a_key(api_url):
    response = httpx.get(f"{api_url.removesuffix('/v1')}/health", timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert body["models"][MODEL] == {"ready": True, "deployment": f"LLMServer:{MODEL}", "status": "HEALTHY",
                                     "replicas": {"RUNNING": 1}}


def test_serve_request_counters_reach_the_node_metrics_endpoint(ray_local, client):
    url = _metrics_url(ray_local)
    before = _counter(httpx.get(url, timeout=30).text, "ray_serve_num_http_requests_total",
                      'route="/v1/chat/completions"')
    for _ in range(3):
        ask(client, stream=False, max_tokens=4)
    deadline = time.monotonic() + 120  # workers push metrics every few seconds; slower on a loaded machine
    while True:
        text = httpx.get(url, timeout=30).text
        http_requests = _counter(text, "ray_serve_num_http_requests_total", 'route="/v1/chat/completions"')
        engine_requests = _counter(
            text, "ray_serve_deployment_request_counter_total", f'deployment="LLMServer:{MODEL}"'
        )
        if http_requests >= before + 3 and engine_requests >= 3:
            break
        assert time.monotonic() < deadline, f"no Serve request counters after 120 s (http {http_requests}, "\
                                            f"before {before}, LLMServer {engine_requests})"
        time.sleep(3)
