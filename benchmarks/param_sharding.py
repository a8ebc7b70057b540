"""Training-state bytes per device of jaxgen's large networks under the parameter rules, per mesh.

    python benchmarks/param_sharding.py [--devices 8] [--rules '.*=fsdp']

Abstract only (`jax.eval_shape`: nothing is allocated, it runs on a laptop): for each network the
float32 training state of the one loop (parameters + Adam's two moments + EMA = 4 copies) and the
bytes the fullest device holds on every data x model mesh of `--devices` simulated devices, by
`jaxgen.parallel.partitioning.state_shardings`. Activations and gradients are not counted.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def networks():
  """(name, abstract params) of the networks the scale-out issue names, at their paper sizes."""
  import jax
  import jax.numpy as jnp

  from jaxgen.nets.biggan import Discriminator, Generator
  from jaxgen.nets.classifiers import build_classifier
  from jaxgen.nets.cond_unet import CondUNetConfig, param_shapes
  from jaxgen.nets.unet_mlp import UnetMLP

  key = jax.random.key(0)

  def shapes(module, *args, **kw):
    return jax.eval_shape(lambda k: module.init(k, *args, **kw), key)["params"]

  yield "MVLD UnetMLP (4 x 64 latents)", shapes(UnetMLP(), jnp.zeros((1, 256)), jnp.zeros((1, 4)))
  yield "SD 1.5 U-Net (t2i / Diff-Mix)", param_shapes(CondUNetConfig.sd15())
  yield "ViT-B/16 classifier (1000 classes)", shapes(build_classifier("vit_b16", 1000),
                                                     jnp.zeros((1, 224, 224, 3)))
  y = jnp.zeros((1, 1000))
  g = Generator(num_classes=1000, resolution=128, ch=96, dim_z=120, hierarchical=True, attention=64)
  d = Discriminator(num_classes=1000, resolution=128, ch=96, attention=64)
  yield "BigGAN G at 128 (1000 classes)", shapes(g, jnp.zeros((1, 120)), y, train=False)
  yield "BigGAN D at 128 (1000 classes)", shapes(d, jnp.zeros((1, 128, 128, 3)), y, train=False)


def per_device_bytes(params, mesh, rules) -> int:
  """Bytes of the 4 state copies each device holds: the rules' shardings of `params` (placed as
  the training loop places `TrainState.params`), applied to their abstract shapes."""
  from jaxgen.parallel.partitioning import bytes_per_device, state_shardings

  tree = {"params": params}
  return 4 * bytes_per_device(tree, state_shardings(tree, mesh, rules))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--rules", nargs="+", default=None, help="REGEX=SPEC rules (default: the config's)")
  args = parser.parse_args()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={args.devices}")
  import jax

  from jaxgen.configlib import DEFAULT_PARAM_RULES, mesh_config
  from jaxgen.parallel.mesh import make_mesh
  from jaxgen.parallel.partitioning import validate_rules

  rules = tuple(args.rules) if args.rules else DEFAULT_PARAM_RULES
  validate_rules(rules)
  shapes = [m for m in range(1, args.devices + 1) if args.devices % m == 0]
  meshes = {m: make_mesh(mesh_config(args.devices // m, m), jax.devices()[:args.devices]) for m in shapes}
  print(f"Training state (params + Adam moments + EMA, float32) per device, rules {rules}, "
        f"{args.devices} devices; jax {jax.__version__}\n")
  print("| network | parameters | " + " | ".join(f"{args.devices // m}x{m}" for m in shapes) + " |")
  print("|---|---:|" + "---:|" * len(shapes))
  for name, params in networks():
    count = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    cells = [f"{per_device_bytes(params, meshes[m], rules) / 2**20:,.0f} MiB" for m in shapes]
    print(f"| {name} | {count / 1e6:.1f}M | " + " | ".join(cells) + " |")
  print("\nColumns: mesh data x model. 'fsdp' splits each leaf's largest dimension divisible by the "
        "model axis; leaves with none stay whole on every device.")


if __name__ == "__main__":
  main()
