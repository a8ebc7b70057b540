"""Start any jaxgen run locally, on a Cloud TPU VM / pod slice, or on a SLURM GPU cluster.

    python -m jaxgen.launch local [--processes=2 --devices-per-process=4] -- --config=configs/mvld.py
    python -m jaxgen.launch tpu --name=my-v4-32 --zone=us-central2-b --workers=4 -- --config=...
    python -m jaxgen.launch slurm --nodes=2 --gpus-per-node=8 -- --config=... --workdir=/shared/w

Everything after `--` is `jaxgen.main`'s command line. Every target runs the same command on every
host and lets `jax.distributed.initialize()` join the processes (JAX's own runtime: the TPU
metadata server, SLURM's variables, or the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID variables the local target sets). The config is parsed and validated for the
target's total device count first, so a run that cannot fit fails here, before any machine starts.
`--dry-run` prints, for each host, the environment and command it would run, and nothing runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import subprocess
import sys
import time
from typing import Sequence

from jaxgen.errors import ConfigError, JaxgenError
from jaxgen.io.paths import is_url

DEFAULT_PORT = 8476


@dataclasses.dataclass(frozen=True)
class HostCommand:
  """What one host (or one process of one host) runs."""

  host: str
  env: dict[str, str]
  argv: list[str]

  def line(self) -> str:
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
    return f"{self.host}: {env + ' ' if env else ''}{shlex.join(self.argv)}"


@dataclasses.dataclass(frozen=True)
class Plan:
  """A launch: per-host commands, plus the submitting command and files for cluster targets."""

  hosts: list[HostCommand]
  submit: list[str] | None = None  # e.g. the gcloud or sbatch command run from this machine
  files: dict[str, str] = dataclasses.field(default_factory=dict)  # path -> text to write first
  total_devices: int = 1


def main_argv(run_args: Sequence[str]) -> list[str]:
  return ["python", "-m", "jaxgen.main", *run_args]


def local_plan(run_args: Sequence[str], processes: int = 1, devices_per_process: int = 0,
               port: int = DEFAULT_PORT) -> Plan:
  """One process, or `processes` joined on loopback (each with simulated CPU devices when
  `devices_per_process` > 0): the multi-host code path on one machine."""
  hosts = []
  for i in range(processes):
    env = {}
    if processes > 1:
      env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes),
                 JAX_PROCESS_ID=str(i))
    if devices_per_process:
      env.update(JAX_PLATFORMS="cpu",
                 XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
    hosts.append(HostCommand(f"process {i}", env, main_argv(run_args)))
  return Plan(hosts, total_devices=processes * max(devices_per_process, 1))


def install_extras(accelerator: str, run_args: Sequence[str]) -> str:
  """The setup.py extras a cluster host installs: its accelerator's jax, plus gcsfs when any path
  of the run is a gs:// URL."""
  return accelerator + (",gcs" if any("gs://" in a for a in run_args) else "")


def tpu_plan(run_args: Sequence[str], name: str, zone: str, workers: int, devices_per_worker: int = 4,
             project: str | None = None, repo_dir: str = "~/jaxgen") -> Plan:
  """The same command on every worker of a TPU VM / pod slice through `gcloud ... ssh --worker=all`;
  JAX reads the slice's topology from the TPU metadata server. launch/run.sh installs jaxgen with
  jax[tpu] into the worker's .venv on the first launch."""
  remote = (f"cd {repo_dir} && JAXGEN_EXTRAS={install_extras('tpu', run_args)} "
            f"bash launch/run.sh {shlex.join(run_args)}")
  submit = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", name, f"--zone={zone}", "--worker=all",
            f"--command={remote}"]
  if project:
    submit.insert(5, f"--project={project}")
  hosts = [HostCommand(f"{name} worker {i}", {}, ["bash", "-c", remote]) for i in range(workers)]
  return Plan(hosts, submit=submit, total_devices=workers * devices_per_worker)


SBATCH_TEMPLATE = """#!/bin/bash
# jaxgen on SLURM: {ntasks_per_node} process(es) per node, {gpus_per_task} GPU(s) each. JAX reads the
# coordinator (first node of SLURM_JOB_NODELIST), SLURM_NTASKS and SLURM_PROCID itself.
#SBATCH --job-name={job_name}
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node={ntasks_per_node}
#SBATCH --gpus-per-node={gpus_per_node}
#SBATCH --time={time}
{partition_line}#SBATCH --output={log_dir}/%x-%j.out
set -euo pipefail
cd {repo_dir}
. launch/env.sh "{extras}"
srun --kill-on-bad-exit=1 python -m jaxgen.main {run_args}
"""


def slurm_plan(run_args: Sequence[str], nodes: int, gpus_per_node: int, per: str = "gpu",
               partition: str | None = None, time: str = "24:00:00", job_name: str = "jaxgen",
               repo_dir: str | None = None, script_path: str = "jaxgen.sbatch",
               log_dir: str = "slurm-logs") -> Plan:
  """An sbatch script with one process per GPU (`per='gpu'`) or per node (`per='node'`, each
  process driving all of its node's GPUs)."""
  if per not in ("gpu", "node"):
    raise ConfigError("(flag --per)", per, "gpu or node")
  ntasks_per_node = gpus_per_node if per == "gpu" else 1
  repo_dir = repo_dir or os.getcwd()
  script = SBATCH_TEMPLATE.format(
      job_name=job_name, nodes=nodes, ntasks_per_node=ntasks_per_node, gpus_per_node=gpus_per_node,
      gpus_per_task=gpus_per_node // ntasks_per_node, time=time, log_dir=log_dir,
      partition_line=f"#SBATCH --partition={partition}\n" if partition else "",
      repo_dir=shlex.quote(repo_dir), run_args=shlex.join(run_args),
      extras=install_extras("cuda", run_args))
  hosts = []
  for node in range(nodes):
    for task in range(ntasks_per_node):
      rank = node * ntasks_per_node + task
      env = {"SLURM_NODEID": str(node), "SLURM_LOCALID": str(task), "SLURM_PROCID": str(rank),
             "SLURM_NTASKS": str(nodes * ntasks_per_node)}
      hosts.append(HostCommand(f"node {node} task {task}", env, main_argv(run_args)))
  return Plan(hosts, submit=["sbatch", script_path], files={script_path: script},
              total_devices=nodes * gpus_per_node)


def validate_run(run_args: Sequence[str], total_devices: int) -> None:
  """Parse `jaxgen.main`'s arguments and validate the config for `total_devices` devices."""
  from jaxgen.main import method_module, parse_flags
  fv = parse_flags(["jaxgen.main", *run_args])
  method_module(fv.config.method).validate_config(fv.config, total_devices)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m jaxgen.launch", description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="target", required=True)
  local = sub.add_parser("local", help="this machine, one or several processes")
  local.add_argument("--processes", type=int, default=1)
  local.add_argument("--devices-per-process", type=int, default=0,
                     help="simulated CPU devices per process (0: the machine's own devices)")
  local.add_argument("--port", type=int, default=DEFAULT_PORT)
  tpu = sub.add_parser("tpu", help="every worker of a Cloud TPU VM or pod slice")
  tpu.add_argument("--name", required=True)
  tpu.add_argument("--zone", required=True)
  tpu.add_argument("--workers", type=int, required=True, help="hosts in the slice (v4-32: 4)")
  tpu.add_argument("--devices-per-worker", type=int, default=4)
  tpu.add_argument("--project")
  tpu.add_argument("--repo-dir", default="~/jaxgen", help="where the repository is on each worker")
  slurm = sub.add_parser("slurm", help="an sbatch job on a SLURM GPU cluster")
  slurm.add_argument("--nodes", type=int, required=True)
  slurm.add_argument("--gpus-per-node", type=int, required=True)
  slurm.add_argument("--per", default="gpu", help="one process per 'gpu' or per 'node'")
  slurm.add_argument("--partition")
  slurm.add_argument("--time", default="24:00:00")
  slurm.add_argument("--job-name", default="jaxgen")
  slurm.add_argument("--repo-dir", help="the repository on the cluster's shared file system")
  slurm.add_argument("--script", default="jaxgen.sbatch", help="where to write the sbatch script")
  for p in (local, tpu, slurm):
    p.add_argument("--dry-run", action="store_true", help="print what each host would run; run nothing")
    p.add_argument("--skip-validation", action="store_true",
                   help="do not parse the config here (e.g. its data only exists on the cluster)")
  return parser


def make_plan(args: argparse.Namespace, run_args: Sequence[str]) -> Plan:
  for name in ("processes", "workers", "nodes", "gpus_per_node", "devices_per_worker"):
    value = getattr(args, name, None)
    if value is not None and value < 1:
      raise ConfigError(f"(flag --{name.replace('_', '-')})", value, "an integer >= 1")
  if args.target == "local":
    if args.devices_per_process < 0:
      raise ConfigError("(flag --devices-per-process)", args.devices_per_process, "an integer >= 0")
    return local_plan(run_args, args.processes, args.devices_per_process, args.port)
  if args.target == "tpu":
    return tpu_plan(run_args, args.name, args.zone, args.workers, args.devices_per_worker,
                    args.project, args.repo_dir)
  return slurm_plan(run_args, args.nodes, args.gpus_per_node, args.per, args.partition, args.time,
                    args.job_name, args.repo_dir, args.script)


def host_environment(env: dict[str, str]) -> dict[str, str]:
  """This process's environment updated with a host's; XLA_FLAGS are appended to the inherited
  ones rather than replacing them (XLA reads the last of a repeated flag), so flags the caller set
  (e.g. launch/test.sh's compile-time flags) still apply to the launched processes."""
  merged = {**os.environ, **env}
  inherited = os.environ.get("XLA_FLAGS", "")
  if "XLA_FLAGS" in env and inherited:
    merged["XLA_FLAGS"] = f"{inherited} {env['XLA_FLAGS']}"
  return merged


def execute(plan: Plan) -> int:
  """Write the plan's files, then submit it (cluster targets) or run its processes here."""
  for path, text in plan.files.items():
    with open(path, "w", encoding="utf-8") as f:
      f.write(text)
  if plan.submit is not None:
    return subprocess.call(plan.submit)
  procs = [subprocess.Popen(h.argv, env=host_environment(h.env)) for h in plan.hosts]
  # If one process fails, the others would wait for it at their next collective (minutes): stop them.
  while any(p.poll() is None for p in procs):
    if any(p.poll() not in (None, 0) for p in procs):
      for p in procs:
        if p.poll() is None:
          p.terminate()
      break
    time.sleep(0.5)
  codes = [p.wait() for p in procs]
  return next((c for c in codes if c), 0)


def shared_workdir_note(target: str, hosts: int, run_args: Sequence[str]) -> str | None:
  """A one-line reminder when several TPU workers would write a workdir that is a path on each
  worker's own disk unless it is a shared mount (process 0 writes stage markers the others read)."""
  if target != "tpu" or hosts < 2:
    return None
  workdir = next((a.split("=", 1)[1] for a in run_args if a.startswith("--workdir=")), None)
  if workdir is not None and is_url(workdir):
    return None
  return (f"jaxgen.launch: note: --workdir={workdir or '(default: workdirs/...)'} is a path on each "
          "worker; it must be the same shared mount on every worker (NFS, gcsfuse), or use "
          "--workdir=gs://bucket/... (pip install -e .[tpu,gcs])")


def run(argv: Sequence[str]) -> int:
  argv = list(argv)
  split = argv.index("--") if "--" in argv else len(argv)
  own, run_args = argv[:split], argv[split + 1:]
  try:
    args = _parser().parse_args(own)
  except SystemExit as err:  # argparse already printed its one-line usage error
    return 2 if err.code else 0
  try:
    if not any(a.startswith("--config=") for a in run_args):
      raise ConfigError("(command line)", " ".join(run_args) or "(nothing after --)",
                        "jaxgen.main's arguments after --, e.g. -- --config=configs/mvld.py")
    plan = make_plan(args, run_args)
    if not args.skip_validation:
      validate_run(run_args, plan.total_devices)
  except JaxgenError as err:
    print(f"jaxgen.launch: error: {err}", file=sys.stderr)
    return err.exit_code
  note = shared_workdir_note(args.target, len(plan.hosts), run_args)
  if note:
    print(note, file=sys.stderr)
  if args.dry_run:
    print(f"# {args.target}: {len(plan.hosts)} process(es), {plan.total_devices} device(s)")
    for path, text in plan.files.items():
      print(f"# would write {path}:\n{text}", end="")
    if plan.submit is not None:
      print("# would run here: " + shlex.join(plan.submit))
    for host in plan.hosts:
      print(host.line())
    return 0
  return execute(plan)


if __name__ == "__main__":
  sys.exit(run(sys.argv[1:]))
