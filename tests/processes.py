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
  --workdir=WORKDIR`, run to completion with its output captured."""
  return subprocess.run([sys.executable, "-m", "jaxgen.launch", "local", "--processes=2",
                         "--devices-per-process=4", f"--port={port}", "--", *args,
                         f"--workdir={workdir}"],
                        env=dict(os.environ, PYTHONPATH=os.getcwd(), **extra_env),
                        capture_output=True, text=True, timeout=timeout)
