"""Deterministic multi-view renderer of labelled 3D solids (a stand-in for NMR, paper 000 sec. IV).

Each object is a convex solid from `SHAPE_CLASSES` (see `jaxgen.data.shapes`) with a random size,
proportions, yaw, two-tone colouring (front half `z > 0` in the object frame differs from the back)
and a floor/sky background. It is ray cast analytically (slab method for half-spaces, a quadratic
for the quadric part) from `num_views` cameras at azimuths 360 v / V degrees and a common
elevation, shaded with a Lambertian model under one fixed directional light with cast shadows on
the floor, and returned as uint8 RGB plus a per-pixel foreground mask.

Determinism: object `i`'s parameters are uniforms drawn from
`fold_in(fold_in(PRNGKey(seed), STREAM), first_object + i)` and its label is `(first_object + i)
mod C`, so any chunking or subset gives identical pixels. The ray caster is elementwise per
object (no matmuls whose blocking could depend on the batch), and each chunk is padded to a
fixed size, so batch composition cannot change rounding.

Speed: objects are grouped host-side by the shape of their geometry (4 compiled signatures), and
each group is rendered in fixed-size chunks of `_RAYS_PER_CHUNK` rays by one jitted, vmapped
function (so no class pays for another's geometry and memory stays bounded); a few host threads
dispatch chunks so that every CPU core is busy. See `benchmarks/render.py`.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.data import shapes
from jaxgen.errors import ConfigError

SHAPE_CLASSES = shapes.SHAPE_CLASSES
SHAPE_GROUPS = shapes.SHAPE_GROUPS
# Background kinds; per-object codes index this tuple.
BACKGROUND_TYPES: tuple[str, ...] = ("random", "plain", "land", "water")
# Bump whenever pixels for a given (seed, object id) change; it keys the on-disk caches.
RENDERER_VERSION = 1
NUM_UNIFORMS = 32
MAX_VIEWS = 24

_STREAM = 0x3D0B  # Separates the renderer's draws from other users of the same seed.
_FOV_DEG = 36.0
_CAMERA_DISTANCE = 3.2
_LIGHT = np.array([-0.45, 0.8, 0.4]) / np.linalg.norm([-0.45, 0.8, 0.4])
_AMBIENT = 0.3
_RAYS_PER_CHUNK = 1 << 16
_MAX_WORKERS = 4
# Uniform columns after the shape's own (0..3).
_U = {name: 4 + i for i, name in enumerate((
    "yaw", "front_h", "front_s", "front_v", "back_dh", "back_s", "back_v",
    "floor_h", "floor_s", "floor_v", "floor2_dv", "tex_kind", "tex_scale", "tex_off_x",
    "tex_off_z", "tex_angle", "sky_h", "sky_v"))}
_BIG = 1e9
# Uniform columns that `render_objects(uniforms_override=...)` may replace: the shape's own
# "shape_0".."shape_3" (scale and proportions, see `shapes.build_pieces`) and those of `_U`.
UNIFORM_COLUMNS: dict[str, int] = {
    **{f"shape_{i}": i for i in range(shapes.NUM_SHAPE_UNIFORMS)}, **_U}


def object_uniforms(seed: int, object_ids: np.ndarray, stream: int = _STREAM) -> np.ndarray:
  """Uniforms [n, NUM_UNIFORMS] in [0, 1) for each id: `uniform(fold_in(fold_in(key, stream), id))`.

  Depends only on (seed, stream, id), so other modules may draw per-object choices from their own
  `stream` without touching the renderer's parameters.
  """
  ids = jnp.asarray(np.asarray(object_ids, np.uint32))
  return np.asarray(_uniforms(jnp.uint32(seed), jnp.uint32(stream), ids), np.float64)


@jax.jit
def _uniforms(seed, stream, ids):
  key = jax.random.fold_in(jax.random.PRNGKey(seed), stream)
  return jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i), (NUM_UNIFORMS,)))(ids)


def object_labels(object_ids: np.ndarray) -> np.ndarray:
  """Class index of each object: `id mod len(SHAPE_CLASSES)` (balanced over contiguous ids)."""
  return (np.asarray(object_ids, np.int64) % len(SHAPE_CLASSES)).astype(np.int32)


def view_azimuths(num_views: int) -> np.ndarray:
  """Camera azimuths in degrees, 360 v / V (V=4: front, right, back, left)."""
  return (360.0 * np.arange(num_views) / num_views).astype(np.float32)


def camera_rays(num_views: int, image_size: int, elevation_deg: float
                ) -> tuple[np.ndarray, np.ndarray]:
  """Pinhole rays: origins [V, 3] and unit directions [V, H*W, 3] (row-major pixels).

  Camera v sits at distance 3.2 at azimuth `view_azimuths(V)[v]` (from +z towards +x) and the
  given elevation, looks at the origin with world y up, and has a 36 degree field of view.
  """
  az = np.deg2rad(view_azimuths(num_views).astype(np.float64))
  el = np.deg2rad(elevation_deg)
  eye = _CAMERA_DISTANCE * np.stack(
      [np.cos(el) * np.sin(az), np.full_like(az, np.sin(el)), np.cos(el) * np.cos(az)], -1)
  fwd = -eye / np.linalg.norm(eye, axis=-1, keepdims=True)
  right = np.cross(fwd, np.array([0.0, 1.0, 0.0]))
  right /= np.linalg.norm(right, axis=-1, keepdims=True)
  up = np.cross(right, fwd)
  half = math.tan(math.radians(_FOV_DEG) / 2)
  coords = ((np.arange(image_size) + 0.5) / image_size * 2.0 - 1.0) * half
  py, px = np.meshgrid(-coords, coords, indexing="ij")
  d = (fwd[:, None, None] + px[None, ..., None] * right[:, None, None]
       + py[None, ..., None] * up[:, None, None])
  d /= np.linalg.norm(d, axis=-1, keepdims=True)
  return eye.astype(np.float32), d.reshape(num_views, -1, 3).astype(np.float32)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Standard HSV -> RGB (h in turns), vectorised; returns [..., 3] in [0, 1]."""
  k = np.mod(np.array([5.0, 3.0, 1.0]).reshape((3,) + (1,) * np.ndim(h)) + (h % 1.0)[None] * 6.0, 6.0)
  rgb = v[None] - v[None] * s[None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
  return np.moveaxis(rgb, 0, -1)


def _appearance(u: np.ndarray, backgrounds: np.ndarray) -> dict[str, np.ndarray]:
  """Colours, yaw and background parameters of each object from its uniforms (host side)."""
  g = lambda name: u[:, _U[name]]  # noqa: E731
  yaw = 2.0 * np.pi * g("yaw")
  front = _hsv_to_rgb(g("front_h"), 0.45 + 0.45 * g("front_s"), 0.6 + 0.4 * g("front_v"))
  back = _hsv_to_rgb(g("front_h") + 0.3 + 0.4 * g("back_dh"), 0.45 + 0.45 * g("back_s"),
                     0.6 + 0.4 * g("back_v"))
  n = u.shape[0]
  # Floor hue/saturation/value ranges and texture per background kind.
  hue = np.select([backgrounds == 2, backgrounds == 3],
                  [0.08 + 0.22 * g("floor_h"), 0.52 + 0.12 * g("floor_h")], g("floor_h"))
  sat = np.select([backgrounds == 2, backgrounds == 3],
                  [0.4 + 0.35 * g("floor_s"), 0.5 + 0.35 * g("floor_s")], 0.1 + 0.7 * g("floor_s"))
  val = np.select([backgrounds == 2, backgrounds == 3],
                  [0.35 + 0.3 * g("floor_v"), 0.4 + 0.35 * g("floor_v")], 0.3 + 0.65 * g("floor_v"))
  floor_a = _hsv_to_rgb(hue, sat, val)
  floor_b = _hsv_to_rgb(hue, sat, np.clip(val * (0.55 + 0.3 * g("floor2_dv")), 0, 1))
  # 0 flat, 1 checker (land), 2 stripes (water); "random" picks any of the three.
  tex = np.select([backgrounds == 1, backgrounds == 2, backgrounds == 3],
                  [0.0, 1.0, 2.0], np.floor(3.0 * g("tex_kind")))
  sky = _hsv_to_rgb(g("sky_h"), np.full(n, 0.3), 0.6 + 0.4 * g("sky_v"))
  sky = np.where((backgrounds == 2)[:, None],
                 _hsv_to_rgb(np.full(n, 0.12), np.full(n, 0.15), 0.85 + 0.15 * g("sky_v")), sky)
  sky = np.where((backgrounds == 3)[:, None],
                 _hsv_to_rgb(np.full(n, 0.58), np.full(n, 0.3), 0.6 + 0.2 * g("sky_v")), sky)
  plain = backgrounds == 1
  sky[plain] = 1.0
  return {
      "yaw_cs": np.stack([np.cos(yaw), np.sin(yaw)], -1),
      "front": front, "back": back, "floor_a": floor_a, "floor_b": floor_b, "sky": sky,
      "tex": np.stack([tex, 0.35 + 0.5 * g("tex_scale"), g("tex_off_x"), g("tex_off_z"),
                       np.pi * g("tex_angle"), (~plain).astype(np.float64)], -1)}


def _dot3(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """Explicit 3-term dot product over the last axis (elementwise, so batch-independent)."""
  return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def _intersect(o, d, planes, smooth, qc, qs, *, has_quad: bool, has_smooth: bool):
  """First hit of rays (o, d) [R, 3] with a union of convex pieces (object frame).

  Each piece: the ray is inside all half-spaces for t in [max entering t, min exiting t] (slab
  method) and inside the quadric between the roots of |(o + t d - c) s|^2 = 1. Returns
  (t [R], unit normal [R, 3], hit [R]). has_quad / has_smooth statically drop unused code.
  """
  def piece(planes, smooth, qc, qs):
    n, h = planes[:, :3], planes[:, 3]
    denom = _dot3(d[:, None, :], n[None])
    num = h[None] - _dot3(o[:, None, :], n[None])
    t = num / jnp.where(denom == 0.0, 1.0, denom)
    t_in_all = jnp.where(denom < 0.0, t, -_BIG)
    t_in = jnp.max(t_in_all, axis=1)
    t_out = jnp.min(jnp.where(denom > 0.0, t, _BIG), axis=1)
    blocked = jnp.any((denom == 0.0) & (num < 0.0), axis=1)
    t_enter, t_exit = t_in, t_out
    # The entering plane as a one-hot (cheaper than argmax + gather on CPU); ties at edges
    # average the two facet normals, which the normalisation below absorbs.
    onehot = (t_in_all == t_in[:, None]).astype(o.dtype)
    plane_n = jnp.sum(onehot[..., None] * n[None], axis=1)
    if has_smooth:
      p = o + t_enter[:, None] * d
      # Facets of a surface of revolution: keep the facet's tilt, take the hit's azimuth.
      radial = p * jnp.array([1.0, 0.0, 1.0])
      radial = radial / jnp.maximum(jnp.sqrt(_dot3(radial, radial)), 1e-6)[:, None]
      horiz = jnp.sqrt(plane_n[:, 0] ** 2 + plane_n[:, 2] ** 2)
      smooth_n = radial * horiz[:, None] + plane_n * jnp.array([0.0, 1.0, 0.0])
      is_smooth = jnp.sum(onehot * smooth[None], axis=1) > 0.5
      plane_n = jnp.where(is_smooth[:, None], smooth_n, plane_n)
    normal = plane_n
    if has_quad:
      q, qd = (o - qc) * qs, d * qs
      a, b, c = _dot3(qd, qd), 2.0 * _dot3(q, qd), _dot3(q, q) - 1.0
      proper = a > 1e-12  # a == 0: ray parallel to an unbounded (cylinder) axis.
      disc = b * b - 4.0 * a * c
      root = jnp.sqrt(jnp.maximum(disc, 0.0))
      a_safe = jnp.where(proper, a, 1.0)
      q_in = jnp.where(proper, (-b - root) / (2.0 * a_safe), -_BIG)
      q_out = jnp.where(proper, (-b + root) / (2.0 * a_safe), _BIG)
      blocked = blocked | jnp.where(proper, disc < 0.0, c > 0.0)
      t_enter, t_exit = jnp.maximum(t_in, q_in), jnp.minimum(t_out, q_out)
      p = o + t_enter[:, None] * d
      quad_n = (p - qc) * qs * qs
      normal = jnp.where((q_in > t_in)[:, None], quad_n, plane_n)
    hit = ~blocked & (t_enter <= t_exit) & (t_enter > 1e-4)
    return jnp.where(hit, t_enter, _BIG), normal

  # One traced copy of the piece code for any number of pieces (keeps compilation short).
  t_k, n_k = jax.vmap(piece)(planes, smooth, qc, qs)
  first = jnp.argmin(t_k, axis=0)
  best_t = jnp.min(t_k, axis=0)
  onehot = (jnp.arange(t_k.shape[0])[:, None] == first[None]).astype(o.dtype)
  normal = jnp.sum(onehot[..., None] * n_k, axis=0)
  normal = normal / jnp.maximum(jnp.sqrt(_dot3(normal, normal)), 1e-12)[:, None]
  return best_t, normal, best_t < _BIG


def _shadowed(o, light, planes, qc, qs, *, has_quad: bool):
  """Whether rays from points o [R, 3] towards the light (one direction [3]) hit the solid.

  Same slab / quadric intervals as `_intersect`, but the direction is shared, so each plane's
  denominator is one scalar and no normal is needed (about a third of the work).
  """
  def piece(planes, qc, qs):
    n, h = planes[:, :3], planes[:, 3]
    denom = _dot3(light[None], n)
    inv = 1.0 / jnp.where(denom == 0.0, 1.0, denom)
    num = h[None] - _dot3(o[:, None, :], n[None])
    t = num * inv[None]
    t_in = jnp.max(jnp.where(denom[None] < 0.0, t, -_BIG), axis=1)
    t_out = jnp.min(jnp.where(denom[None] > 0.0, t, _BIG), axis=1)
    blocked = jnp.any((denom[None] == 0.0) & (num < 0.0), axis=1)
    if has_quad:
      q, qd = (o - qc) * qs, light * qs
      a, b, c = _dot3(qd, qd), 2.0 * _dot3(q, qd[None]), _dot3(q, q) - 1.0
      proper = a > 1e-12
      disc = b * b - 4.0 * a * c
      root = jnp.sqrt(jnp.maximum(disc, 0.0))
      a_safe = jnp.where(proper, a, 1.0)
      t_in = jnp.maximum(t_in, jnp.where(proper, (-b - root) / (2.0 * a_safe), -_BIG))
      t_out = jnp.minimum(t_out, jnp.where(proper, (-b + root) / (2.0 * a_safe), _BIG))
      blocked = blocked | jnp.where(proper, disc < 0.0, c > 0.0)
    return ~blocked & (t_in <= t_out) & (t_out > 1e-4)

  return jnp.any(jax.vmap(piece)(planes, qc, qs), axis=0)


def _render_one(obj, ray_o, ray_d, light, *, has_quad: bool, has_smooth: bool):
  """Shades all rays [R] of one object; returns (rgb [R, 3] float in [0, 1], mask [R])."""
  c, s = obj["yaw_cs"][0], obj["yaw_cs"][1]
  to_local = lambda v: jnp.stack(  # noqa: E731  (inverse yaw rotation about y)
      [c * v[:, 0] - s * v[:, 2], v[:, 1], s * v[:, 0] + c * v[:, 2]], -1)
  tex = obj["tex"]
  floor_y = -obj["half_height"]
  has_floor = (ray_d[:, 1] < -1e-6) & (tex[5] > 0.5)
  t_floor = jnp.where(has_floor, (floor_y - ray_o[:, 1]) / jnp.where(has_floor, ray_d[:, 1], -1.0),
                      _BIG)
  pf = ray_o + jnp.where(has_floor, t_floor, 0.0)[:, None] * ray_d
  o_l, d_l = to_local(ray_o), to_local(ray_d)
  t_obj, n_l, hit = _intersect(o_l, d_l, obj["planes"], obj["smooth"], obj["qc"], obj["qs"],
                               has_quad=has_quad, has_smooth=has_smooth)
  shadowed = _shadowed(to_local(pf), to_local(light[None])[0], obj["planes"], obj["qc"], obj["qs"],
                       has_quad=has_quad)

  n_w = jnp.stack([c * n_l[:, 0] + s * n_l[:, 2], n_l[:, 1], -s * n_l[:, 0] + c * n_l[:, 2]], -1)
  p_l = o_l + t_obj[:, None] * d_l
  albedo = jnp.where((p_l[:, 2] >= 0.0)[:, None], obj["front"], obj["back"])
  lambert = _AMBIENT + (1.0 - _AMBIENT) * jnp.maximum(_dot3(n_w, light[None]), 0.0)
  obj_rgb = albedo * lambert[:, None]

  fx, fz = pf[:, 0] / tex[1] + tex[2], pf[:, 2] / tex[1] + tex[3]
  checker = jnp.mod(jnp.floor(fx) + jnp.floor(fz), 2.0)
  stripes = 0.5 + 0.5 * jnp.sin(2.0 * jnp.pi * (fx * jnp.cos(tex[4]) + fz * jnp.sin(tex[4])))
  mix = jnp.where(tex[0] == 1.0, checker, jnp.where(tex[0] == 2.0, stripes, 0.0))
  floor_rgb = obj["floor_a"] * (1.0 - mix[:, None]) + obj["floor_b"] * mix[:, None]
  floor_light = _AMBIENT + (1.0 - _AMBIENT) * light[1] * jnp.where(shadowed, 0.0, 1.0)
  # Fog towards the sky hides far-field texture aliasing.
  fog = 1.0 - jnp.exp(-jnp.maximum(t_floor - 3.5, 0.0) / 3.0)
  floor_rgb = floor_rgb * floor_light[:, None] * (1.0 - fog[:, None]) + obj["sky"] * fog[:, None]
  bg = jnp.where(has_floor[:, None], floor_rgb, obj["sky"])
  mask = hit & (t_obj < t_floor)
  return jnp.where(mask[:, None], obj_rgb, bg), mask


@functools.partial(jax.jit, static_argnames=("has_quad", "has_smooth"))
def _render_chunk(obj, ray_o, ray_d, light, *, has_quad: bool, has_smooth: bool):
  """vmapped `_render_one` over objects; rays [V, HW, 3] are flattened to [V*HW]."""
  v, hw, _ = ray_d.shape
  o = jnp.broadcast_to(ray_o[:, None], ray_d.shape).reshape(-1, 3)
  render = functools.partial(_render_one, has_quad=has_quad, has_smooth=has_smooth)
  rgb, mask = jax.vmap(render, in_axes=(0, None, None, None))(obj, o, ray_d.reshape(-1, 3), light)
  img = jnp.round(jnp.clip(rgb, 0.0, 1.0) * 255.0).astype(jnp.uint8)
  return img.reshape(-1, v, hw, 3), mask.reshape(-1, v, hw)


def _plane_bucket(num_planes: int) -> int:
  """Groups classes into few compiled signatures (plane counts 0-2, 3-8, 9-17)."""
  for bucket in (2, 8, 17):
    if num_planes <= bucket:
      return bucket
  return num_planes


def _check(num_views: int, image_size: int, elevation_deg: float) -> None:
  if not 1 <= num_views <= MAX_VIEWS:
    raise ConfigError("num_views", num_views, f"an integer in [1, {MAX_VIEWS}]")
  if not 4 <= image_size <= 1024:
    raise ConfigError("image_size", image_size, "an integer in [4, 1024]")
  if not -80.0 <= elevation_deg <= 80.0:
    raise ConfigError("elevation_deg", elevation_deg, "degrees in [-80, 80]")


def _apply_overrides(u: np.ndarray, overrides: Mapping[str, np.ndarray]) -> np.ndarray:
  """Copy of the uniforms `u` [n, NUM_UNIFORMS] with the named columns replaced (validated)."""
  u = u.copy()
  for name, values in overrides.items():
    if name not in UNIFORM_COLUMNS:
      raise ConfigError("uniforms_override", name, f"a column name in {tuple(UNIFORM_COLUMNS)}")
    try:
      col = np.broadcast_to(np.asarray(values, np.float64), u.shape[:1])
    except (ValueError, TypeError):
      raise ConfigError(f"uniforms_override.{name}", np.shape(values),
                        f"a scalar or {u.shape[0]} per-object values") from None
    if not np.all((col >= 0.0) & (col < 1.0)):
      raise ConfigError(f"uniforms_override.{name}", (float(np.min(col)), float(np.max(col))),
                        "finite values in [0, 1)")
    u[:, UNIFORM_COLUMNS[name]] = col
  return u


def _check_shape_classes(shape_classes: np.ndarray, n: int) -> np.ndarray:
  """Per-object class indices broadcast to [n] int32, each in [0, len(SHAPE_CLASSES))."""
  arr = np.asarray(shape_classes)
  if arr.size and not np.issubdtype(arr.dtype, np.integer):
    raise ConfigError("shape_classes", arr.dtype.name, "integer class indices")
  try:
    arr = np.broadcast_to(arr.astype(np.int64), (n,))
  except ValueError:
    raise ConfigError("shape_classes", arr.shape, f"a scalar or {n} class indices") from None
  if arr.size and (arr.min() < 0 or arr.max() >= len(SHAPE_CLASSES)):
    raise ConfigError("shape_classes", (int(arr.min()), int(arr.max())),
                      f"indices in [0, {len(SHAPE_CLASSES)})")
  return arr.astype(np.int32)


def render_objects(seed: int, object_ids: np.ndarray, backgrounds: np.ndarray | int, *,
                   num_views: int = 4, image_size: int = 64, elevation_deg: float = 20.0,
                   uniforms_override: Mapping[str, np.ndarray] | None = None,
                   shape_classes: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Renders the given objects with per-object background codes (indices into BACKGROUND_TYPES).

  Returns 'images' uint8 [N, V, H, W, 3], 'masks' bool [N, V, H, W], 'labels' int32 [N],
  'azimuths' float32 [V]. Pixels of object `id` depend only on (seed, id, its background code,
  num_views, image_size, elevation_deg) and, when given, its override values.

  uniforms_override: {column name in UNIFORM_COLUMNS: a scalar or [N] values in [0, 1)} replaces
    those columns of the objects' uniforms before geometry and appearance are built, e.g.
    {"front_h": ...} to force the front hue (colour-worded or fine-grained classes of
    `jaxgen.data.t2i_sets`). shape_classes: a scalar or [N] indices into SHAPE_CLASSES that
    replace `id mod C` as each object's solid (and its returned label). Without either, pixels
    are exactly those of the plain call (they are not part of any cache key, so callers that
    cache must key on them themselves).
  """
  _check(num_views, image_size, elevation_deg)
  if not 0 <= seed < 2**32:
    raise ConfigError("seed", seed, "an integer in [0, 2**32)")
  ids = np.asarray(object_ids, np.int64).reshape(-1)
  backgrounds = np.broadcast_to(np.asarray(backgrounds, np.int64), ids.shape)
  if ids.size and (ids.min() < 0 or ids.max() >= 2**32):
    raise ConfigError("object_ids", (int(ids.min()), int(ids.max())), "ids in [0, 2**32)")
  if backgrounds.size and not np.isin(backgrounds, np.arange(len(BACKGROUND_TYPES))).all():
    raise ConfigError("backgrounds", np.unique(backgrounds).tolist(),
                      f"codes in [0, {len(BACKGROUND_TYPES)})")
  n, hw = ids.size, image_size * image_size
  labels = object_labels(ids) if shape_classes is None else _check_shape_classes(shape_classes, n)
  images = np.zeros((n, num_views, hw, 3), np.uint8)
  masks = np.zeros((n, num_views, hw), bool)
  ray_o, ray_d = camera_rays(num_views, image_size, elevation_deg)
  ray_o, ray_d, light = jnp.asarray(ray_o), jnp.asarray(ray_d), jnp.asarray(_LIGHT, jnp.float32)
  chunk = max(1, _RAYS_PER_CHUNK // (num_views * hw))
  u = object_uniforms(seed, ids) if n else np.zeros((0, NUM_UNIFORMS))
  if uniforms_override:
    u = _apply_overrides(u, uniforms_override)
  groups: dict[tuple[int, int, bool, bool], list] = {}
  for cls, name in enumerate(SHAPE_CLASSES):
    idx = np.flatnonzero(labels == cls)
    if idx.size == 0:
      continue
    pieces = shapes.build_pieces(name, u[idx, :shapes.NUM_SHAPE_UNIFORMS])
    # Signature: pieces, padded plane count and which optional code paths the class needs.
    key = (pieces.planes.shape[1], _plane_bucket(pieces.planes.shape[2]),
           bool(pieces.quad_inv_scale.any()), bool(pieces.smooth.any()))
    groups.setdefault(key, []).append((idx, shapes.pad_pieces(pieces, key[1])))
  tasks = []
  for (_, _, has_quad, has_smooth), group in groups.items():
    idx = np.concatenate([g[0] for g in group])
    cat = lambda f: np.concatenate([getattr(g[1], f) for g in group])  # noqa: E731
    obj = {"planes": cat("planes"), "smooth": cat("smooth"), "qc": cat("quad_center"),
           "qs": cat("quad_inv_scale"), "half_height": cat("half_height")}
    obj.update(_appearance(u[idx], backgrounds[idx]))
    for start in range(0, idx.size, chunk):
      tasks.append((obj, idx, start, has_quad, has_smooth))

  def run(task) -> None:
    obj, idx, start, has_quad, has_smooth = task
    sel = idx[start:start + chunk]
    # Always a full chunk (padded by repeating the last object): one compilation per
    # signature, and a chunk is only _RAYS_PER_CHUNK rays, so padding small calls is cheap.
    rows = np.minimum(np.arange(chunk), sel.size - 1) + start
    batch = {k: jnp.asarray(v[rows], jnp.float32) for k, v in obj.items()}
    img, msk = _render_chunk(batch, ray_o, ray_d, light, has_quad=has_quad,
                             has_smooth=has_smooth)
    images[sel] = np.asarray(img)[:sel.size]
    masks[sel] = np.asarray(msk)[:sel.size]

  # XLA:CPU runs one chunk on one core; a few host threads keep every core busy. Chunks write
  # disjoint rows, so the result does not depend on the schedule.
  workers = min(_MAX_WORKERS, os.cpu_count() or 1, len(tasks))
  if workers <= 1:
    for task in tasks:
      run(task)
  else:
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      list(pool.map(run, tasks))
  return {
      "images": images.reshape(n, num_views, image_size, image_size, 3),
      "masks": masks.reshape(n, num_views, image_size, image_size),
      "labels": labels,
      "azimuths": view_azimuths(num_views),
  }


def render_multiview(seed: int, num_objects: int, *, num_views: int = 4, image_size: int = 64,
                     elevation_deg: float = 20.0, background: str = "random",
                     first_object: int = 0) -> dict[str, np.ndarray]:
  """Renders objects first_object .. first_object + num_objects - 1 (NMR-like, paper 000 IV).

  background: one of BACKGROUND_TYPES ("random" floor colour/texture and sky per object,
  "plain" white like NMR, or the "land"/"water" kinds of the background-shift variant).
  Returns 'images' uint8 [N, V, H, W, 3], 'masks' bool [N, V, H, W], 'labels' int32 [N],
  'azimuths' float32 [V].
  """
  if background not in BACKGROUND_TYPES:
    raise ConfigError("background", background, f"one of {BACKGROUND_TYPES}")
  if num_objects < 0 or first_object < 0:
    raise ConfigError("num_objects", (num_objects, first_object), "non-negative counts")
  ids = first_object + np.arange(num_objects, dtype=np.int64)
  return render_objects(seed, ids, np.full(ids.shape, BACKGROUND_TYPES.index(background)),
                        num_views=num_views, image_size=image_size, elevation_deg=elevation_deg)
