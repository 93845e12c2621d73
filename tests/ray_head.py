"""A throwaway Ray head started with `ray start --head --block`, for tests that submit real jobs.

Every port is a free one and the temp dir is its own, so it never meets another Ray on the machine
(other test runs, other users). It is stopped by signalling its own process group and then any process
left running from its temp dir, never with `ray stop` (which stops every Ray of the user).
"""

from __future__ import annotations

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

PORT_OPTIONS = ("--port", "--dashboard-port", "--ray-client-server-port", "--node-manager-port",
                "--object-manager-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                "--metrics-export-port", "--runtime-env-agent-port")


class RayHead:
    def __init__(self, num_cpus: int = 2, start_timeout_s: float = 120):
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
                   f"--temp-dir={self.temp_dir}", f"--num-cpus={num_cpus}", "--object-store-memory=300000000",
                   "--node-ip-address=127.0.0.1", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                   "--disable-usage-stats",
                   *(f"{option}={port}" for option, port in zip(PORT_OPTIONS, ports, strict=True))]
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

    def stop(self) -> None:
        """SIGTERM to `ray start --block` and its process group,
        then SIGKILL to whatever of this head remains."""
        # a graceful `ray start --block` shutdown takes 20+ s here; a throwaway head need not wait for it
        for sig, grace_s in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=grace_s)
                break
            except subprocess.TimeoutExpired:
                continue
        for pid in processes_using(self.temp_dir):  # job drivers and workers start their own sessions
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


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
