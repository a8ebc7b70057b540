"""Helpers for the tests that start several processes joined by jax.distributed on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Sequence


def free_port() -> int:
  """A loopback port nothing listens on now (the other pytest worker starts processes too)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch_two(args: Sequence[str], workdir, port: int, extra_env: dict[str, str],
               timeout: int = 1800) -> subprocess.CompletedProcess:
  """`python -m jaxgen.launch local --processes=2 --devices-per-process=4 -- ARGS
  --workdir=WORKDIR`, run to completion with its output captured. Without the launcher's own
  config check (`--skip-validation`: tests/test_launch.py tests it): each process validates the
  config before anything runs, and the check's 2.5 s per launch add up over the suite."""
  return subprocess.run([sys.executable, "-m", "jaxgen.launch", "local", "--processes=2",
                         "--devices-per-process=4", f"--port={port}", "--skip-validation", "--",
                         *args, f"--workdir={workdir}"],
                        env=dict(os.environ, PYTHONPATH=os.getcwd(), **extra_env),
                        capture_output=True, text=True, timeout=timeout)


class TwoProcesses:
  """`code` (python -c, with ARGS) started as processes 0 and 1 of a jax.distributed job on
  loopback (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID: what
  `jaxgen.parallel.mesh.initialize_distributed` reads), 4 simulated CPU devices each. `stdouts`
  waits for both; `kill` ends any still running."""

  def __init__(self, code: str, *args: str):
    env = dict(os.environ, PYTHONPATH=os.getcwd(),
               JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}", JAX_NUM_PROCESSES="2",
               XLA_FLAGS="--xla_force_host_platform_device_count=4")
    self.procs = [subprocess.Popen([sys.executable, "-c", code, *args], text=True,
                                   env=dict(env, JAX_PROCESS_ID=str(i)), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE) for i in range(2)]

  def stdouts(self, timeout: int = 300) -> list[str]:
    """Both processes' stdouts, once both exited 0 (within `timeout` s from now)."""
    try:
      outs = [p.communicate(timeout=timeout) for p in self.procs]
    finally:
      self.kill()
    for p, (_, err) in zip(self.procs, outs):
      assert p.returncode == 0, err[-2000:]
    return [out for out, _ in outs]

  def kill(self) -> None:
    for p in self.procs:
      p.kill()


def run_two(code: str, *args: str, timeout: int = 300) -> list[str]:
  """Run `code` as the two processes of `TwoProcesses`; their stdouts, once both exited 0."""
  return TwoProcesses(code, *args).stdouts(timeout)
