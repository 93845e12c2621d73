"""A throwaway Ray cluster on this machine: a head started with `ray start --head --block`, and worker
nodes with `ray start --address=HEAD --block`, for tests that submit real jobs or need several nodes.

Every port is a free one and the temp dir is its own, so it never meets another Ray on the machine
(other test runs, other users). Nodes are stopped by signalling their own process groups and then any
process left running from the cluster's temp dir, never with `ray stop` (which stops every Ray of the user).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

NODE_PORT_OPTIONS = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                     "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port")
PORT_OPTIONS = ("--port", "--dashboard-port", "--ray-client-server-port", *NODE_PORT_OPTIONS)


class RayHead:
    def __init__(self, num_cpus: int = 2, start_timeout_s: float = 120, object_store_mb: int = 300,
                 resources: dict[str, float] | None = None):
        # short: socket paths are limited
        self.temp_dir = Path(tempfile.mkdtemp(prefix="lmf-head-", dir="/tmp"))
        ports = free_ports(len(PORT_OPTIONS))
        self.dashboard_url = f"http://127.0.0.1:{ports[1]}"
        # no token auth on this private head (ray 2.60 turns it on when ~/.ray/auth_token exists);
        # the job's `python` is this venv's; no PYTHONPATH: the job must import the code it uploaded
        self.env = {
            key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "PYTHONPATH")
        }
        self.env |= {
            "RAY_AUTH_MODE": "disabled",
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        }
        command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                   f"--temp-dir={self.temp_dir}", f"--num-cpus={num_cpus}",
                   f"--object-store-memory={object_store_mb * 10**6}",
                   "--node-ip-address=127.0.0.1", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                   "--disable-usage-stats", "--node-name=head", f"--resources={json.dumps(resources or {})}",
                   *(f"{option}={port}" for option, port in zip(PORT_OPTIONS, ports, strict=True))]
        self.gcs_address = f"127.0.0.1:{ports[0]}"
        self.nodes: list[RayNode] = []
        self.log = (self.temp_dir / "ray_start.log").open("w")
        self.process = subprocess.Popen(command, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        try:
            self._wait_for_dashboard(start_timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_for_dashboard(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited {self.process.returncode}: {self.log_text()}")
            try:
                with urllib.request.urlopen(f"{self.dashboard_url}/api/version", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1)
        raise TimeoutError(
            f"Ray dashboard at {self.dashboard_url} not up after {timeout_s} s: {self.log_text()}"
        )

    def log_text(self) -> str:
        return (self.temp_dir / "ray_start.log").read_text(errors="replace")[-3000:]

    def add_node(self, name: str, num_cpus: int, resources: dict[str, float] | None = None,
                 object_store_mb: int = 200, start_timeout_s: float = 120) -> RayNode:
        """A worker node named `name` joined to this head; returns once the head counts it alive."""
        node = RayNode(self, name, num_cpus, resources or {}, object_store_mb)
        self.nodes.append(node)
        node.wait_alive(start_timeout_s)
        return node

    def stop(self) -> None:
        """Every worker node, then the head: their process groups, then whatever remains of the cluster."""
        for node in self.nodes:
            node.kill()
        _stop_group(self.process, graceful=True)
        for pid in processes_using(self.temp_dir):  # job drivers and workers start their own sessions
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


class RayNode:
    """A worker node of a RayHead's cluster: `ray start --address=HEAD --block` with its own name,
    CPUs and custom resources. Its raylet, object store and workers run in its own process group."""

    def __init__(self, head: RayHead, name: str, num_cpus: int, resources: dict[str, float],
                 object_store_mb: int):
        self.head, self.name = head, name
        ports = free_ports(len(NODE_PORT_OPTIONS))
        command = [str(Path(sys.executable).parent / "ray"), "start", f"--address={head.gcs_address}",
                   # its own temp dir, as a machine has its own disk: nodes sharing one would share (and
                   # garbage-collect) each other's copies of a job's working dir
                   f"--temp-dir={head.temp_dir / name}", "--block", f"--num-cpus={num_cpus}",
                   f"--object-store-memory={object_store_mb * 10**6}",
                   f"--resources={json.dumps(resources)}", f"--node-name={name}",
                   "--node-ip-address=127.0.0.1", "--disable-usage-stats",
                   *(f"{option}={port}" for option, port in zip(NODE_PORT_OPTIONS, ports, strict=True))]
        self.log = (head.temp_dir / f"ray_start_{name}.log").open("w")
        self.process = subprocess.Popen(command, env=head.env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def node_id(self) -> str | None:
        """The node's id while the head lists it alive."""
        from ray.util.state import list_nodes

        # no server-side filter: with one, ray 2.60 reports the other nodes as "missing output"
        alive = [node.node_id for node in list_nodes(address=self.head.dashboard_url, limit=1000)
                 if node.node_name == self.name and node.state == "ALIVE"]
        return alive[0] if alive else None

    def wait_alive(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start of node {self.name} exited {self.process.returncode}: "
                                   + (self.head.temp_dir / f"ray_start_{self.name}.log").read_text()[-3000:])
            with contextlib.suppress(Exception):  # the dashboard's state API may not answer yet
                if self.node_id():
                    return
            time.sleep(1)
        raise TimeoutError(f"node {self.name} not alive after {timeout_s} s")

    def kill(self) -> None:
        """The node lost, as a machine dies: SIGKILL to its raylet, its workers and `ray start`."""
        _stop_group(self.process, graceful=False)
        self.log.close()


def _stop_group(process: subprocess.Popen, graceful: bool) -> None:
    """SIGTERM (when graceful) then SIGKILL to `process`'s group until `process` has exited."""
    # a graceful `ray start --block` shutdown takes 20+ s here; a throwaway cluster need not wait for it
    signals = ((signal.SIGTERM, 5), (signal.SIGKILL, 10)) if graceful else ((signal.SIGKILL, 10),)
    for sig, grace_s in signals:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def processes_using(directory: Path) -> list[int]:
    """Pids of this user's processes whose command line or working directory lies under `directory`."""
    needle = str(directory)
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "cmdline").read_bytes().decode(errors="replace") or \
                    os.readlink(proc / "cwd").startswith(needle):
                found.append(int(proc.name))
        except OSError:  # gone, or not ours
            continue
    return found
