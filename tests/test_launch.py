"""jaxgen.launch: the per-host commands of the local, TPU and SLURM targets (dry runs), the config
validated for the target's device count before anything starts, and one-line errors."""

import os
import shlex
import subprocess
import sys

from jaxgen import launch

TINY = "--config=configs/lrgmm.py:tiny"


def _dry(capsys, *argv):
  code = launch.run([*argv, "--dry-run", "--", TINY, "--workdir=/shared/w"])
  out, err = capsys.readouterr()
  return code, out, err


def test_tpu_dry_run_prints_one_gcloud_command_and_every_worker(capsys):
  code, out, err = _dry(capsys, "tpu", "--name=pod", "--zone=us-central2-b", "--workers=4",
                        "--project=proj")
  assert code == 0, err
  lines = out.splitlines()
  assert lines[0] == "# tpu: 4 process(es), 16 device(s)"
  submit = next(line for line in lines if line.startswith("# would run here: "))
  argv = shlex.split(submit[len("# would run here: "):])
  assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "--project=proj"]
  assert "--worker=all" in argv and "--zone=us-central2-b" in argv
  remote = next(a for a in argv if a.startswith("--command="))[len("--command="):]
  assert remote == f"cd ~/jaxgen && JAXGEN_EXTRAS=tpu bash launch/run.sh {TINY} --workdir=/shared/w"
  workers = [line for line in lines if line.startswith("pod worker ")]
  assert [w.split(":")[0] for w in workers] == [f"pod worker {i}" for i in range(4)]
  assert all(w.endswith(shlex.join(["bash", "-c", remote])) for w in workers)
  assert "--workdir=/shared/w is a path on each worker; it must be the same shared mount" in err


def test_a_bucket_workdir_needs_no_shared_mount_note(capsys):
  code = launch.run(["tpu", "--name=pod", "--zone=z", "--workers=4", "--dry-run", "--", TINY,
                     "--workdir=gs://bucket/run"])
  out, err = capsys.readouterr()
  assert code == 0 and "shared mount" not in err
  assert "JAXGEN_EXTRAS=tpu,gcs bash launch/run.sh" in out  # gcsfs on every worker
  assert launch.shared_workdir_note("tpu", 1, ["--workdir=/local"]) is None  # one worker: its disk is fine


def test_slurm_dry_run_writes_the_sbatch_script_and_one_process_per_gpu(capsys, tmp_path):
  script = tmp_path / "job.sbatch"
  code, out, err = _dry(capsys, "slurm", "--nodes=2", "--gpus-per-node=4", "--partition=gpu",
                        f"--script={script}", "--repo-dir=/shared/jaxgen")
  assert code == 0, err
  assert "#SBATCH --nodes=2" in out and "#SBATCH --ntasks-per-node=4" in out
  assert "#SBATCH --gpus-per-node=4" in out and "#SBATCH --partition=gpu" in out
  assert f"srun --kill-on-bad-exit=1 python -m jaxgen.main {TINY} --workdir=/shared/w" in out
  assert "cd /shared/jaxgen" in out
  assert '. launch/env.sh "cuda"' in out  # jax with CUDA in the job's .venv
  assert not script.exists()  # a dry run writes nothing
  tasks = [line for line in out.splitlines() if line.startswith("node ")]
  assert len(tasks) == 8
  assert tasks[5].startswith("node 1 task 1: SLURM_LOCALID=1 SLURM_NODEID=1 SLURM_NTASKS=8 SLURM_PROCID=5 ")
  # One process per node drives all of its GPUs.
  code, out, _ = _dry(capsys, "slurm", "--nodes=2", "--gpus-per-node=4", "--per=node")
  assert code == 0 and "#SBATCH --ntasks-per-node=1" in out
  assert len([line for line in out.splitlines() if line.startswith("node ")]) == 2


def test_local_dry_run_joins_processes_on_loopback(capsys):
  code, out, err = _dry(capsys, "local", "--processes=2", "--devices-per-process=4", "--port=9999")
  assert code == 0, err
  lines = [line for line in out.splitlines() if line.startswith("process ")]
  assert lines[1] == ("process 1: JAX_COORDINATOR_ADDRESS=127.0.0.1:9999 JAX_NUM_PROCESSES=2 "
                      "JAX_PLATFORMS=cpu JAX_PROCESS_ID=1 "
                      "XLA_FLAGS=--xla_force_host_platform_device_count=4 "
                      f"python -m jaxgen.main {TINY} --workdir=/shared/w")


def test_the_config_is_validated_for_the_targets_devices_before_anything_starts(capsys):
  # mesh.model=3 cannot divide a 16-chip slice: refused here, naming the key, exit code 2.
  code = launch.run(["tpu", "--name=pod", "--zone=z", "--workers=4", "--dry-run", "--", TINY,
                     "--config.mesh.model=3"])
  _, err = capsys.readouterr()
  assert code == 2 and err.count("\n") == 1 and "mesh.model" in err and "16" in err
  assert launch.run(["slurm", "--nodes=0", "--gpus-per-node=8", "--dry-run", "--", TINY]) == 2
  assert "--nodes" in capsys.readouterr().err
  assert launch.run(["local", "--dry-run"]) == 2  # nothing after --
  assert "after --" in capsys.readouterr().err
  assert launch.run(["local", "--dry-run", "--", "--config=configs/lrgmm.py:tiny",
                     "--config.no_such_key=1"]) == 2
  assert "no_such_key" in capsys.readouterr().err


def test_module_entry_point_exit_codes(tmp_path):
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  ok = subprocess.run([sys.executable, "-m", "jaxgen.launch", "slurm", "--nodes=1", "--gpus-per-node=2",
                       "--dry-run", "--skip-validation", "--", TINY], capture_output=True, text=True,
                      env=env, timeout=120)
  assert ok.returncode == 0 and "node 0 task 1" in ok.stdout
  bad = subprocess.run([sys.executable, "-m", "jaxgen.launch", "cloud", "--", TINY],
                       capture_output=True, text=True, env=env, timeout=120)
  assert bad.returncode == 2 and "invalid choice: 'cloud'" in bad.stderr
