"""The entry point: bad input fails before compilation with one line and exit code 2."""

import subprocess
import sys

import pytest

from jaxgen import main as jaxgen_main

CONFIG = "--config=configs/mvld.py:tiny"


def _run(capsys, *args):
  code = jaxgen_main.run(["jaxgen.main", *args])
  err = capsys.readouterr().err.strip().splitlines()
  return code, err


@pytest.mark.parametrize("args, needle", [
    ((CONFIG, "--config.autoencoder.nosuchkey=1"), "unknown key 'nosuchkey'"),
    ((CONFIG, "--config.diffusion.train.batch_size=abc"), "config.diffusion.train.batch_size='abc': expected an integer"),
    ((CONFIG, "--config.diffusion.train.batch_size=-8"), "config.diffusion.train.batch_size=-8"),
    ((CONFIG, "--config.autoencoder.train.batch_size=12"), "multiple of the data-parallel size 8"),
    ((CONFIG, "--config.data.name=imagenet"), "config.data.name='imagenet'"),
    ((CONFIG, "--config.sampler.name=magic"), "config.sampler.name='magic'"),
    ((CONFIG, "--config.diffusion.joint_prob=1.5"), "config.diffusion.joint_prob=1.5"),
    ((CONFIG, "--config.evaluate.observed_counts=(1,4)"), "observed_counts"),
    (("--config=configs/mvld.py:huge",), "preset"),
    (("--config=configs/nosuch.py",), "existing config file"),
    ((CONFIG, "--stages=train,fly"), "stages among"),
    ((CONFIG, "--config.method=gan9000"), "config.method='gan9000'"),
    ((CONFIG, "--config.mesh.model=3"), "config.mesh.model=3: expected a divisor of the 8 available devices"),
    ((CONFIG, "--config.mesh.param_rules=('kernel=rows',)"), "config.mesh.param_rules"),
    ((CONFIG, "--config.diffusion.sde=vesde", "--config.diffusion.prediction=eps",
      "--config.sampler.name=euler_maruyama", "--config.diffusion.vesde.sigma_max=0.001"),
     "config.diffusion.vesde.sigma_max=0.001: expected a number > sigma_min"),
    ((CONFIG, "--config.diffusion.vpsde.beta_min=-1.0"), "config.diffusion.vpsde.beta_min=-1.0"),
    ((CONFIG, "--config.diffusion.sde_params.beta_min=1.0"), "unknown key 'sde_params'"),
    (("--config=configs/dimvida.py:tiny", "--config.mesh.model=3"), "config.mesh.model=3"),
])
def test_bad_input_is_one_line_and_exit_code_2(capsys, tmp_path, args, needle):
  code, err = _run(capsys, *args, f"--workdir={tmp_path}")
  assert code == 2
  assert len(err) == 1 and err[0].startswith("jaxgen: error:"), err
  assert needle in err[0], err[0]
  assert not any(tmp_path.iterdir()), "nothing may be written before validation passes"


def test_missing_nmr_data_path_is_a_data_error(capsys, tmp_path):
  code, err = _run(capsys, CONFIG, "--config.data.name=nmr", "--config.data.data_dir=/no/such/dir",
                   "--stages=data", f"--workdir={tmp_path}")
  assert code == 2 and len(err) == 1 and "/no/such/dir" in err[0], err


def test_exit_code_from_a_real_process(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "jaxgen.main", CONFIG, "--config.seed=x",
                         f"--workdir={tmp_path}"], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().count("\n") == 0 and "config.seed" in proc.stderr


def test_a_finished_workdir_refuses_a_changed_config(capsys, tmp_path):
  """Rerunning a workdir with another value fails in one line naming the key and the recorded value
  (its stages would skip or resume under the old one); the recorded config.json stays."""
  args = (CONFIG, "--stages=data", f"--workdir={tmp_path}")
  assert _run(capsys, *args)[0] == 0
  recorded = (tmp_path / "config.json").read_text()
  code, err = _run(capsys, *args, "--config.sampler.num_steps=7")
  assert code == 2 and len(err) == 1, err
  assert err[0].startswith("jaxgen: error: config.sampler.num_steps=7: expected "), err[0]
  assert "use a new --workdir" in err[0]
  assert (tmp_path / "config.json").read_text() == recorded
  assert _run(capsys, *args)[0] == 0
