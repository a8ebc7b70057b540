"""The host description in results.json (jaxgen.io.report.cpu_model / environment)."""

from jaxgen.io.report import cpu_model, environment, reproduction_scope


def _write(tmp_path, text: str) -> str:
  path = tmp_path / "cpuinfo"
  path.write_text(text)
  return str(path)


def test_cpu_model_adds_family_and_model_of_the_first_processor(tmp_path):
  info = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n"
          "model name\t: AMD EPYC\nstepping\t: 1\n\n"
          "processor\t: 1\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n")
  assert cpu_model(_write(tmp_path, info)) == "AMD EPYC (family 26, model 2)"


def test_cpu_model_without_family_numbers_is_the_name(tmp_path):
  # e.g. an ARM host's /proc/cpuinfo has no 'cpu family' line
  assert cpu_model(_write(tmp_path, "processor\t: 0\nmodel name\t: Neoverse-V2\n")) == "Neoverse-V2"


def test_environment_records_the_host_and_the_page_sentence_names_it():
  env = environment()
  assert env["cpu_model"] == cpu_model()
  if env["backend"] == "cpu":
    assert f"CPU model {env['cpu_model']}," in reproduction_scope(env)
