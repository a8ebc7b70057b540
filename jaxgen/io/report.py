"""`WORKDIR/results.json` and `WORKDIR/report.md`, the two files every method run ends with.

Both always name the data, the seed(s) and the feature network behind any FID-like number, so a
table can never be read without knowing what it measured.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
from typing import Any, Callable, Iterable, Sequence

import jax
import ml_collections

from jaxgen.io.files import atomic_write_json, atomic_write_text


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], floatfmt: str = ".4g") -> str:
  """A GitHub-style markdown table; floats formatted with `floatfmt`."""

  def cell(v: Any) -> str:
    if isinstance(v, float):
      return format(v, floatfmt)
    return str(v)

  lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
  lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
  return "\n".join(lines)


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
  """The host CPU's model name, with its x86 family and model numbers where /proc/cpuinfo gives
  them (XLA:CPU compiles for the host, so float rounding can differ between CPU models: a page is
  reproduced bit for bit only on its own; virtual machines often show a generic name such as
  'AMD EPYC' for several generations, which the numbers tell apart)."""
  fields: dict[str, str] = {}
  try:
    with open(cpuinfo, encoding="utf-8") as f:
      for line in f:
        if not line.strip():
          break  # the first processor's block
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
  except OSError:
    pass
  name = fields.get("model name") or platform.processor() or platform.machine()
  if "cpu family" in fields and "model" in fields:
    name += f" (family {fields['cpu family']}, model {fields['model']})"
  return name


def environment() -> dict:
  """Where the numbers were produced: devices, backend, versions, host CPU."""
  return {
      "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()][:8],
      "device_count": jax.device_count(),
      "process_count": jax.process_count(),
      "jax": jax.__version__,
      "python": platform.python_version(),
      # XLA:CPU's convolution route of the training steps (jaxgen.train.xla_cpu); float rounding
      # differs between routes, so a page is reproduced bit for bit only on its own route.
      "cpu_conv_route": os.environ.get("JAXGEN_XLA_CPU_CONV", "xla"),
      "cpu_model": cpu_model(),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }


def reproduction_scope(env: dict) -> str | None:
  """A results page's sentence on where its numbers reproduce: the backend and devices, jax, the
  host CPU model and XLA:CPU convolution route of `environment()`. None for a results.json
  written before the CPU model was recorded (its page keeps the text it was made with)."""
  if "cpu_model" not in env:
    return None
  where = f"{env['backend']} x{env['device_count']}, jax {env['jax']}"
  if env["backend"] == "cpu":
    where += (f", CPU model {env['cpu_model']}, XLA:CPU convolution route "
              f"`{env.get('cpu_conv_route', 'xla')}`")
  return (f"Run on {where}. Same config and seed give the same numbers on the same CPU model, "
          "route and library versions (docs/scaling.md); other CPU models round differently.")


def write_results(workdir: str, config: ml_collections.ConfigDict, results: dict, *, data: str,
                  feature_network: str | None) -> dict:
  """Write `results.json`: the method's metrics plus config, seed, data and feature network."""
  record = {
      "method": config.method,
      "preset": config.get("preset", "default"),
      "seed": config.seed,
      "data": data,
      "feature_network": feature_network or "none (no feature-based metric)",
      "environment": environment(),
      **results,
      "config": config.to_dict(),
  }
  atomic_write_json(os.path.join(workdir, "results.json"), record)
  return record


def write_report(workdir: str, title: str, *, config: ml_collections.ConfigDict, data: str,
                 feature_network: str | None, sections: Sequence[tuple[str, str]]) -> str:
  """Write `report.md`: a header naming data/seed/feature network, then (heading, body) sections."""
  env = environment()
  header = [
      f"# {title}",
      "",
      f"- method: `{config.method}`, preset `{config.get('preset', 'default')}`",
      f"- data: {data}",
      f"- seed: {config.seed}",
      f"- feature network for FID-like metrics: {feature_network or 'none'}",
      f"- run on: {env['backend']} x{env['device_count']} (jax {env['jax']}), {env['date']}",
      "",
  ]
  body = []
  for heading, text in sections:
    body += [f"## {heading}", "", text.rstrip(), ""]
  markdown = "\n".join(header + body)
  atomic_write_text(os.path.join(workdir, "report.md"), markdown)
  return markdown


def json_numbers(tree: Any, formats: Callable[[int | float], Iterable[str]],
                 key_pattern: re.Pattern | None = None) -> set[str]:
  """Every number of a JSON tree as `formats` writes it (and keys matching `key_pattern`, such as
  a table's N): what a generated results page may print."""
  out: set[str] = set()

  def walk(node: Any) -> None:
    if isinstance(node, dict):
      for k, v in node.items():
        if key_pattern is not None and key_pattern.fullmatch(str(k)):
          out.add(str(k))
        walk(v)
    elif isinstance(node, (list, tuple)):
      for v in node:
        walk(v)
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
      out.update(formats(node))

  walk(tree)
  return out


def unlisted_numbers(markdown: str, known: set[str], pattern: re.Pattern,
                     line_prefixes: Sequence[str] = ("|",)) -> list[str]:
  """Numbers (`pattern`) on the lines starting with `line_prefixes` that are not in `known`:
  a results page's check that it prints only numbers of its JSON sources (should be empty)."""
  bad = []
  for line in markdown.splitlines():
    if line.startswith(tuple(line_prefixes)):
      bad += [m for m in pattern.findall(line) if m not in known]
  return bad


MIN_SEEDS = 3  # no claim either way from fewer seeds


def compare_over_seeds(a: Sequence[float], b: Sequence[float], seeds_a: Sequence[int],
                       seeds_b: Sequence[int]) -> dict:
  """Does `a` beat `b` (per-seed values, higher is better)? Unpaired: a's mean - std above b's
  mean + std (or a's mean + std below b's mean - std). Paired, for runs where each seed's a and b
  share their randomness (initialisation, batches, sampling noise): the per-seed differences'
  mean - std above 0 (or mean + std below 0). Stds over seeds without Bessel's correction.
  Neither is claimed with fewer than MIN_SEEDS seeds or with different seeds."""
  a, b = [float(v) for v in a], [float(v) for v in b]
  a_mean, b_mean, a_std, b_std = _mean(a), _mean(b), _std(a), _std(b)
  enough = len(a) >= MIN_SEEDS and list(seeds_a) == list(seeds_b)
  paired = [x - y for x, y in zip(a, b)]
  p_mean, p_std = _mean(paired), _std(paired)
  return {"mean_difference": a_mean - b_mean, "num_seeds": len(a),
          "beats_beyond_one_std": bool(enough and a_mean - a_std > b_mean + b_std),
          "loses_beyond_one_std": bool(enough and a_mean + a_std < b_mean - b_std),
          "paired_differences": paired, "paired_mean": p_mean, "paired_std": p_std,
          "wins": sum(d > 0 for d in paired),
          "beats_paired": bool(enough and p_mean - p_std > 0),
          "loses_paired": bool(enough and p_mean + p_std < 0)}


def comparison_words(v: dict) -> str:
  """A `compare_over_seeds` result as the reports word it: yes / no / not shown / not claimed."""
  n = v["num_seeds"]
  paired = (f"paired difference {v['paired_mean']:+.3f} +- {v['paired_std']:.3f}, higher in "
            f"{v['wins']} of {n} seeds")
  if n < MIN_SEEDS:
    return f"not claimed: {n} seed(s), fewer than {MIN_SEEDS} ({paired})"
  if v["beats_beyond_one_std"]:
    return f"yes, by {v['mean_difference']:+.3f}, beyond one std of either ({paired})"
  if v["loses_beyond_one_std"]:
    return f"no, worse by {v['mean_difference']:+.3f}, beyond one std of either ({paired})"
  if v["beats_paired"]:
    return (f"yes when paired by seed ({paired}); the unpaired means differ by "
            f"{v['mean_difference']:+.3f}, within one std")
  if v["loses_paired"]:
    return f"no, worse when paired by seed ({paired})"
  return f"not shown: {paired}, within one std"


def _mean(values: Sequence[float]) -> float:
  return float(sum(values) / len(values))


def _std(values: Sequence[float]) -> float:
  m = _mean(values)
  return float((sum((v - m) ** 2 for v in values) / len(values)) ** 0.5)
