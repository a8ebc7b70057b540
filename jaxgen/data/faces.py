"""Registered procedural faces: an embedded stand-in for aligned CelebA-HQ (LR-GMM-NN).

LR-GMM-NN fits a Gaussian mixture to autoencoder latents of *aligned* faces and then replaces
latent pixels of a sample by those of its nearest training images at the same spatial position.
That only works when the images are registered: the face is centred and the eyes, nose and mouth
sit at nearly fixed pixels, so that position (i, j) means "left eye" in every image. This module
draws such faces itself, since no data can be downloaded.

What is drawn (image coordinates x right, y up, both in [-1, 1]; back to front): a background
of random colour with a vertical gradient; shoulders in a random shirt colour; long hair behind
the head; neck; ears; the head ellipse (width and height within +-10 %, centre jittered by at
most 1.25 % of the image side); the front hair (`HAIR_STYLES`: short cap, long, fringe with
zig-zag bangs, bald with side tufts) in one of `HAIR_COLOURS`; cheek blush; an optional
moustache or beard; eyes (white, iris in one of `EYE_COLOURS`, pupil, upper lid) with small
jitter in spacing, height, size and gaze; eyebrows (tilt, thickness); a shaded nose (side
shadow, tip, nostrils); a mouth whose curvature is the smile and whose width varies, sometimes
open with teeth; optional glasses (two rings, a bridge, arms, a faint lens tint). Every edge is
a signed distance turned into coverage by a smoothstep over one pixel (anti-aliased at any
size), and skin and hair are shaded by a random light direction on an ellipsoid head model.

Labels: `label = id mod 8` (exactly balanced over contiguous ids) fixes the two attributes that
are plainly visible at 32x32: hair group `label // 2` (`HAIR_GROUPS`: dark = black or brown,
blond, red, grey) and glasses `label % 2`. `FACE_CLASSES` names the 8 classes. All other
attributes are random.

Determinism: face `id`'s parameters are the uniforms
`uniform(fold_in(fold_in(PRNGKey(seed), STREAM), id), (NUM_UNIFORMS,))`, mapped to attributes
on the host in float64. Pixels are computed elementwise per face in float32 by one jitted, vmapped
function over fixed-size chunks (the last one padded), so any chunking or subset of ids gives
bit-identical images.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.data.sources import ArraySource
from jaxgen.errors import ConfigError

# Bump whenever pixels for a given (seed, id, image_size) change.
FACES_VERSION = 1
STREAM = 0xFACE  # Separates the faces' draws from other users of the same seed.
NUM_UNIFORMS = 48
HAIR_COLOURS: tuple[str, ...] = ("black", "brown", "blond", "red", "grey")
HAIR_GROUPS: tuple[str, ...] = ("dark", "blond", "red", "grey")
HAIR_STYLES: tuple[str, ...] = ("short", "long", "fringe", "bald")
EYE_COLOURS: tuple[str, ...] = ("brown", "blue", "green", "grey")
FACIAL_HAIR: tuple[str, ...] = ("none", "moustache", "beard")
FACE_CLASSES: tuple[str, ...] = tuple(
    f"{g}_hair{'_glasses' if k else ''}" for g in HAIR_GROUPS for k in (0, 1))
SPLITS: tuple[str, ...] = ("train", "test", "aux")

_PIXELS_PER_CHUNK = 1 << 18
_MAX_WORKERS = 4
_HAIR_RGB = np.array([[0.10, 0.08, 0.07], [0.36, 0.22, 0.12], [0.86, 0.71, 0.43],
                      [0.72, 0.30, 0.13], [0.70, 0.70, 0.69]])
_EYE_RGB = np.array([[0.36, 0.21, 0.10], [0.25, 0.45, 0.78], [0.30, 0.56, 0.30],
                     [0.52, 0.57, 0.62]])
_FRAME_RGB = np.array([[0.06, 0.06, 0.07], [0.30, 0.18, 0.10], [0.14, 0.18, 0.42],
                       [0.62, 0.52, 0.28]])
_SKIN_LIGHT, _SKIN_DARK = np.array([0.97, 0.81, 0.70]), np.array([0.40, 0.25, 0.16])
# Column of each named uniform; the rest of the NUM_UNIFORMS are spare (adding a parameter
# later takes a spare column, so existing columns keep their values).
_U = {name: i for i, name in enumerate((
    "hair_sub", "hair_style", "hair_value", "hair_volume", "hairline", "head_w", "head_h",
    "head_dx", "head_dy", "skin_tone", "skin_warm", "eye_colour", "eye_dx", "eye_dy",
    "eye_size", "gaze", "brow_tilt", "brow_thick", "brow_dy", "nose_size", "smile", "mouth_w",
    "mouth_dy", "mouth_open", "lip", "light_angle", "light_strength", "bg_h", "bg_s", "bg_v",
    "bg_grad", "shirt_h", "shirt_s", "shirt_v", "frame_colour", "frame_thick", "lens_size",
    "blush", "facial_hair", "ear_size", "neck_w", "lens_tint"))}


def face_uniforms(seed: int, object_ids: np.ndarray) -> np.ndarray:
  """Uniforms [n, NUM_UNIFORMS] in [0, 1) of each id (the module docstring's key derivation)."""
  ids = jnp.asarray(np.asarray(object_ids, np.uint32))
  return np.asarray(_uniforms(jnp.uint32(seed), ids), np.float64)


@jax.jit
def _uniforms(seed, ids):
  key = jax.random.fold_in(jax.random.PRNGKey(seed), STREAM)
  return jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i), (NUM_UNIFORMS,)))(ids)


def _hsv(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Standard HSV -> RGB (h in turns), [n] -> [n, 3] in [0, 1]."""
  k = np.mod(np.array([5.0, 3.0, 1.0])[None] + (h % 1.0)[:, None] * 6.0, 6.0)
  return v[:, None] - (v * s)[:, None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _parameters(u: np.ndarray, labels: np.ndarray) -> tuple[dict, dict]:
  """Host-side map from uniforms to (kernel parameters [n] / [n, 3], public attributes)."""
  g = lambda name: u[:, _U[name]]  # noqa: E731
  sym = lambda name: 2.0 * g(name) - 1.0  # noqa: E731  (uniform in [-1, 1))
  group, glasses = labels // 2, labels % 2
  colour = np.choose(group, [(g("hair_sub") >= 0.5).astype(np.int64), 2, 3, 4])
  style = np.minimum((4.0 * g("hair_style")).astype(np.int64), 3)
  eye = np.minimum((4.0 * g("eye_colour")).astype(np.int64), 3)
  facial = np.where(g("facial_hair") < 0.72, 0, np.where(g("facial_hair") < 0.86, 1, 2))
  smile = -0.3 + 1.3 * g("smile")
  mouth_open = (g("mouth_open") < 0.35) & (smile > 0.35)
  tone = g("skin_tone")
  skin = _SKIN_LIGHT + tone[:, None] * (_SKIN_DARK - _SKIN_LIGHT)
  skin = skin * (1.0 + 0.06 * sym("skin_warm")[:, None] * np.array([1.0, 0.0, -1.0]))
  hair = _HAIR_RGB[colour] * (0.85 + 0.3 * g("hair_value"))[:, None]
  angle = 2.0 * np.pi * g("light_angle")
  strength = 0.15 + 0.55 * g("light_strength")
  light = np.stack([0.7 * np.cos(angle), 0.7 * np.sin(angle), np.full_like(angle, 0.714)], -1)
  rx, ry = 0.51 + 0.05 * sym("head_w"), 0.65 + 0.05 * sym("head_h")
  tilt = 0.03 * sym("brow_tilt")
  p = {
      "cx": 0.025 * sym("head_dx"), "cy": -0.02 + 0.025 * sym("head_dy"), "rx": rx, "ry": ry,
      "skin": np.clip(skin, 0.0, 1.0), "hair": np.clip(hair, 0.0, 1.0),
      "brow": np.clip(hair * np.where(colour[:, None] >= 2, 0.7, 0.85), 0.0, 1.0),
      "style": style.astype(np.float64), "volume": g("hair_volume"),
      "hairline": 0.06 * sym("hairline"),
      "light": light, "strength": strength,
      "side": np.where(light[:, 0] >= 0.0, -1.0, 1.0),
      "bg": _hsv(g("bg_h"), 0.1 + 0.5 * g("bg_s"), 0.35 + 0.6 * g("bg_v")),
      "bg_grad": 0.35 * sym("bg_grad"),
      "shirt": _hsv(g("shirt_h"), 0.15 + 0.7 * g("shirt_s"), 0.2 + 0.7 * g("shirt_v")),
      "ex": 0.205 + 0.02 * sym("eye_dx"), "ey": 0.08 + 0.015 * sym("eye_dy"),
      "es": 0.88 + 0.24 * g("eye_size"), "gaze": 0.015 * sym("gaze"), "iris": _EYE_RGB[eye],
      "brow_in": 0.11 + tilt, "brow_out": 0.11 - tilt, "brow_dy": 0.025 * sym("brow_dy"),
      "brow_t": 0.016 + 0.016 * g("brow_thick"), "ns": 0.85 + 0.3 * g("nose_size"),
      "smile": 0.075 * smile, "mw": 0.13 + 0.07 * g("mouth_w"),
      "my": -0.36 + 0.015 * sym("mouth_dy"), "open": np.where(mouth_open, 0.05, 0.0),
      "lip": np.clip(skin * (0.55 + 0.15 * g("lip"))[:, None] + np.array([0.18, 0.02, 0.03]),
                     0.0, 1.0),
      "glasses": glasses.astype(np.float64), "frame": _FRAME_RGB[
          np.minimum((4.0 * g("frame_colour")).astype(np.int64), 3)],
      "frame_t": 0.018 + 0.01 * g("frame_thick"), "lens": 0.12 + 0.02 * g("lens_size"),
      "tint": 0.08 + 0.12 * g("lens_tint"), "blush": 0.25 * g("blush"),
      "facial": facial.astype(np.float64), "ear": 0.9 + 0.2 * g("ear_size"),
      "neck": 0.42 + 0.1 * g("neck_w"),
  }
  attributes = {
      "hair_group": group.astype(np.int32), "glasses": glasses.astype(np.int32),
      "hair_colour": colour.astype(np.int32), "hair_style": style.astype(np.int32),
      "eye_colour": eye.astype(np.int32), "facial_hair": facial.astype(np.int32),
      "mouth_open": mouth_open.astype(np.int32), "smile": smile.astype(np.float32),
      "skin_tone": tone.astype(np.float32), "head_width": (2 * rx).astype(np.float32),
      "head_height": (2 * ry).astype(np.float32), "light_angle": angle.astype(np.float32),
      "light_strength": strength.astype(np.float32),
  }
  return p, attributes


def _cover(sdf, px):
  """Coverage of a shape with signed distance `sdf`: smoothstep over one pixel `px` wide."""
  t = jnp.clip(0.5 - sdf / px, 0.0, 1.0)
  return t * t * (3.0 - 2.0 * t)


def _ellipse(x, y, cx, cy, rx, ry):
  """Approximate signed distance to an ellipse (k0 (k0 - 1) / k1; exact on circles)."""
  ux, uy = (x - cx) / rx, (y - cy) / ry
  k0 = jnp.sqrt(ux * ux + uy * uy)
  k1 = jnp.sqrt(ux * ux / (rx * rx) + uy * uy / (ry * ry))
  return jnp.where(k1 > 1e-6, k0 * (k0 - 1.0) / jnp.maximum(k1, 1e-6), -jnp.minimum(rx, ry))


def _segment(x, y, ax, ay, bx, by):
  """Distance to the segment a-b (a capsule of radius r is `_segment(...) - r`)."""
  pax, pay, bax, bay = x - ax, y - ay, bx - ax, by - ay
  h = jnp.clip((pax * bax + pay * bay) / (bax * bax + bay * bay), 0.0, 1.0)
  dx, dy = pax - bax * h, pay - bay * h
  return jnp.sqrt(dx * dx + dy * dy)


def _box(x, y, cx, cy, hx, hy):
  """Signed distance to an axis-aligned box with half sizes (hx, hy)."""
  dx, dy = jnp.abs(x - cx) - hx, jnp.abs(y - cy) - hy
  out = jnp.sqrt(jnp.maximum(dx, 0.0) ** 2 + jnp.maximum(dy, 0.0) ** 2)
  return out + jnp.minimum(jnp.maximum(dx, dy), 0.0)


def _arc(x, y, cx, cy, w, c):
  """Distance to the parabola arc y = cy + c (u^2 - 1/2), u = (x - cx) / w, |u| <= 1."""
  xc = jnp.clip(x - cx, -w, w)
  slope = 2.0 * c * xc / (w * w)
  dv = (y - cy - c * (xc * xc / (w * w) - 0.5)) / jnp.sqrt(1.0 + slope * slope)
  dh = jnp.abs(x - cx) - jnp.abs(xc)
  return jnp.sqrt(dv * dv + dh * dh)


def _face(p, x, y, px):
  """One face: parameters (scalars / [3]) and grids x, y [S, S] -> RGB float [S, S, 3]."""
  cx, cy, rx, ry = p["cx"], p["cy"], p["rx"], p["ry"]
  paint = lambda img, a, rgb: img + a[..., None] * (rgb - img)  # noqa: E731
  # Ellipsoid head normal (clamped to the silhouette outside) for the light's shading.
  nx, ny = (x - cx) / (1.1 * rx), (y - cy) / (1.1 * ry)
  r2 = nx * nx + ny * ny
  norm = jnp.maximum(jnp.sqrt(r2), 1.0)
  n_dot_l = (nx * p["light"][0] + ny * p["light"][1]) / norm \
      + jnp.sqrt(jnp.maximum(1.0 - r2, 0.0)) * p["light"][2]
  shade = jnp.clip(1.0 + p["strength"] * (n_dot_l - p["light"][2]), 0.35, 1.3)[..., None]
  skin, hair = p["skin"] * shade, p["hair"] * shade
  img = jnp.broadcast_to(p["bg"] * (1.0 + p["bg_grad"] * y)[..., None], x.shape + (3,))
  img = paint(img, _cover(_ellipse(x, y, cx, -1.32, 0.98, 0.58), px), p["shirt"] * shade)
  style, vol = p["style"], p["volume"]
  # Long hair behind the head: a rounded column from the crown to below the chin.
  back = jnp.minimum(_ellipse(x, y, cx, cy + 0.04, rx * (1.17 + 0.1 * vol), ry * 1.06),
                     _box(x, y, cx, cy - 0.3, rx * (1.1 + 0.1 * vol), 0.42 + 0.12 * vol))
  img = paint(img, _cover(back, px) * (style == 1.0), hair * 0.85)
  neck = _box(x, y, cx, cy - ry - 0.1, rx * p["neck"], 0.35)
  img = paint(img, _cover(neck, px), skin * 0.8)
  for side in (-1.0, 1.0):
    ear = _ellipse(x, y, cx + side * rx * 0.97, cy + 0.02, 0.07 * p["ear"], 0.12 * p["ear"])
    img = paint(img, _cover(ear, px), skin * 0.9)
  head = _ellipse(x, y, cx, cy, rx, ry)
  img = paint(img, _cover(head, px), skin)
  # Front hair: an outer cap minus the visible-face window, cut per style.
  outer = _ellipse(x, y, cx, cy + 0.06, rx * (1.06 + 0.06 * vol), ry * (1.0 + 0.06 * vol))
  window = _ellipse(x, y, cx, cy - 0.1 - p["hairline"], rx * 0.93, ry * 0.93)
  zigzag = 2.0 * jnp.abs((x - cx) * 9.0 - jnp.floor((x - cx) * 9.0) - 0.5)
  bangs = jnp.maximum(window, y - (cy + 0.3 - p["hairline"] - 0.04 * zigzag))
  front = jnp.maximum(outer, -jnp.where(style == 2.0, bangs, window))
  front = jnp.where(style == 0.0, jnp.maximum(front, cy - 0.05 - y), front)
  tufts = jnp.maximum(jnp.maximum(outer, -window), jnp.minimum(
      _ellipse(x, y, cx - rx, cy + 0.08, 0.24, 0.2), _ellipse(x, y, cx + rx, cy + 0.08, 0.24, 0.2)))
  front = jnp.where(style == 3.0, tufts, front)
  img = paint(img, _cover(front, px), hair)
  ex, ey, es, my, mw = p["ex"], cy + p["ey"], p["es"], cy + p["my"], p["mw"]
  for side in (-1.0, 1.0):
    cheek = _ellipse(x, y, cx + side * 0.27, cy - 0.17, 0.09, 0.06)
    img = paint(img, _cover(cheek, 0.12) * p["blush"], jnp.array([0.85, 0.35, 0.38]))
  # Facial hair: a moustache arc above the mouth, or a beard over the jaw around the mouth.
  stache = jnp.maximum(_ellipse(x, y, cx, my + 0.05, mw * 0.9, 0.04),
                       my + 0.02 - 0.03 * ((x - cx) / mw) ** 2 - y)
  beard = jnp.maximum(jnp.maximum(head + 0.005, y - (cy - 0.2)),
                      -_ellipse(x, y, cx, my + 0.01, mw + 0.04, 0.07))
  beard = jnp.minimum(beard, stache)
  img = paint(img, _cover(jnp.where(p["facial"] == 1.0, stache, beard), px)
              * (p["facial"] > 0.0), p["brow"])
  for side in (-1.0, 1.0):
    ecx = cx + side * ex
    white = _ellipse(x, y, ecx, ey, 0.085 * es, 0.048 * es)
    a_white = _cover(white, px)
    img = paint(img, a_white, jnp.array([0.95, 0.94, 0.92]))
    iris = jnp.sqrt((x - ecx - p["gaze"]) ** 2 + (y - ey) ** 2)
    img = paint(img, jnp.minimum(_cover(iris - 0.042 * es, px), a_white), p["iris"])
    img = paint(img, jnp.minimum(_cover(iris - 0.018 * es, px), a_white), jnp.zeros(3) + 0.03)
    lid = jnp.maximum(jnp.abs(white) - 0.011, ey - 0.006 - y)
    img = paint(img, _cover(lid, px), skin * 0.35)
    brow = _segment(x, y, cx + side * (ex - 0.075), ey + p["brow_in"] + p["brow_dy"],
                    cx + side * (ex + 0.09), ey + p["brow_out"] + p["brow_dy"]) - p["brow_t"]
    img = paint(img, _cover(brow, px), p["brow"])
  ns, tip_y = p["ns"], cy - 0.16
  ridge = _segment(x, y, cx + p["side"] * 0.035, cy + 0.03, cx + p["side"] * 0.05 * ns,
                   tip_y + 0.01) - 0.012
  img = paint(img, _cover(ridge, px) * 0.3, skin * 0.75)
  img = paint(img, _cover(_ellipse(x, y, cx, tip_y - 0.01, 0.055 * ns, 0.038 * ns), px) * 0.5,
              skin * 0.8)
  img = paint(img, _cover(_ellipse(x, y, cx - p["side"] * 0.012, tip_y + 0.005, 0.025 * ns,
                                   0.02 * ns), px) * 0.4, jnp.minimum(skin * 1.15, 1.0))
  for side in (-1.0, 1.0):
    nostril = _ellipse(x, y, cx + side * 0.03 * ns, tip_y - 0.03, 0.016, 0.011)
    img = paint(img, _cover(nostril, px) * 0.8, skin * 0.4)
  # Mouth: the lip line is the smile arc; an open mouth is the region under it, teeth on top.
  u2 = jnp.clip((x - cx) / mw, -1.0, 1.0) ** 2
  upper = my + p["smile"] * (u2 - 0.5)
  lower = upper - p["open"] * (1.0 - u2)
  inside = jnp.maximum(jnp.maximum(y - upper, lower - y), jnp.abs(x - cx) - mw)
  img = paint(img, _cover(inside, px) * (p["open"] > 0.0), jnp.array([0.35, 0.08, 0.1]))
  teeth = jnp.maximum(inside, upper - 0.45 * p["open"] * (1.0 - u2) - y)
  img = paint(img, _cover(teeth, px) * (p["open"] > 0.0), jnp.array([0.93, 0.92, 0.88]))
  lip = _arc(x, y, cx, my, mw, p["smile"]) - 0.016
  img = paint(img, _cover(lip, px), p["lip"])
  lower_lip = _ellipse(x, y, cx, lower - 0.035, mw * 0.55, 0.025)
  img = paint(img, _cover(lower_lip, px) * 0.35, p["lip"])
  # Glasses: rings round the eyes, a bridge, arms to the ears, a faint tint inside.
  g, ft, lens = p["glasses"], p["frame_t"], p["lens"]
  frame = _segment(x, y, cx - ex + lens, ey + 0.01, cx + ex - lens, ey + 0.01) - ft * 0.7
  for side in (-1.0, 1.0):
    ring = _ellipse(x, y, cx + side * ex, ey, lens, lens * 0.82)
    img = paint(img, _cover(ring, px) * p["tint"] * g, jnp.array([0.75, 0.85, 0.95]))
    frame = jnp.minimum(frame, jnp.abs(ring) - ft)
    frame = jnp.minimum(frame, _segment(x, y, cx + side * (ex + lens), ey + 0.02,
                                        cx + side * rx * 0.98, ey + 0.04) - ft * 0.7)
  return paint(img, _cover(frame, px) * g, p["frame"])


@functools.partial(jax.jit, static_argnames=("image_size",))
def _render_chunk(params, *, image_size: int):
  """vmapped `_face` over a chunk of faces -> uint8 [n, S, S, 3]."""
  coords = (jnp.arange(image_size, dtype=jnp.float32) + 0.5) * (2.0 / image_size) - 1.0
  y, x = jnp.meshgrid(-coords, coords, indexing="ij")
  rgb = jax.vmap(_face, in_axes=(0, None, None, None))(params, x, y, 2.0 / image_size)
  return jnp.round(jnp.clip(rgb, 0.0, 1.0) * 255.0).astype(jnp.uint8)


def face_labels(object_ids: np.ndarray) -> np.ndarray:
  """Class index (into FACE_CLASSES) of each face: `id mod 8` = 2 * hair group + glasses."""
  return (np.asarray(object_ids, np.int64) % len(FACE_CLASSES)).astype(np.int32)


def render_faces(seed: int, object_ids: np.ndarray, *, image_size: int = 32
                 ) -> dict[str, np.ndarray | dict[str, np.ndarray]]:
  """Draws the faces `object_ids` (see the module docstring for what is drawn).

  Returns 'images' uint8 [N, S, S, 3], 'labels' int32 [N] (indices into FACE_CLASSES) and
  'attributes', a dict of [N] arrays: hair_group, glasses, hair_colour (HAIR_COLOURS),
  hair_style (HAIR_STYLES), eye_colour (EYE_COLOURS), facial_hair (FACIAL_HAIR), mouth_open
  (int32); smile in [-0.3, 1], skin_tone in [0, 1] (light to dark), head_width, head_height
  (image half-widths, the image spans 2), light_angle (radians), light_strength (float32).
  Pixels of face `id` depend only on (seed, id, image_size).
  """
  if not isinstance(image_size, (int, np.integer)) or not 16 <= image_size <= 256:
    raise ConfigError("image_size", image_size, "an integer in [16, 256]")
  if not 0 <= int(seed) < 2**32:
    raise ConfigError("seed", seed, "an integer in [0, 2**32)")
  ids = np.asarray(object_ids, np.int64).reshape(-1)
  if ids.size and (ids.min() < 0 or ids.max() >= 2**32):
    raise ConfigError("object_ids", (int(ids.min()), int(ids.max())), "ids in [0, 2**32)")
  n, size = ids.size, int(image_size)
  labels = face_labels(ids)
  u = face_uniforms(int(seed), ids) if n else np.zeros((0, NUM_UNIFORMS))
  params, attributes = _parameters(u, labels.astype(np.int64))
  images = np.zeros((n, size, size, 3), np.uint8)
  chunk = max(1, _PIXELS_PER_CHUNK // (size * size))

  def run(start: int) -> None:
    stop = min(start + chunk, n)
    # Always a full chunk (padded by repeating the last face): one compilation per size.
    rows = np.minimum(np.arange(start, start + chunk), n - 1)
    batch = {k: jnp.asarray(v[rows], jnp.float32) for k, v in params.items()}
    images[start:stop] = np.asarray(_render_chunk(batch, image_size=size))[:stop - start]

  # XLA:CPU runs one chunk on one core; a few host threads keep every core busy. Chunks write
  # disjoint rows, so the result does not depend on the schedule.
  starts = list(range(0, n, chunk))
  workers = min(_MAX_WORKERS, os.cpu_count() or 1, len(starts))
  if workers <= 1:
    for start in starts:
      run(start)
  else:
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      list(pool.map(run, starts))
  return {"images": images, "labels": labels, "attributes": attributes}


def split_ids(split: str, num_train: int, num_test: int, num_aux: int) -> np.ndarray:
  """Face ids of a split: train [0, n), test [n, n + m), aux [n + m, n + m + a)."""
  bounds = np.cumsum([0, num_train, num_test, num_aux])
  i = SPLITS.index(split)
  return np.arange(bounds[i], bounds[i + 1], dtype=np.int64)


@functools.lru_cache(maxsize=4)
def _cached_render(seed: int, start: int, stop: int, image_size: int) -> dict:
  # Cached so that several stages asking for the same split in one process render it once.
  out = render_faces(seed, np.arange(start, stop), image_size=image_size)
  for v in [out["images"], out["labels"], *out["attributes"].values()]:
    v.setflags(write=False)
  return out


class FaceSource(ArraySource):
  """In-memory faces: records {'image' uint8 [S, S, 3], 'label' int32 []} plus metadata.

  Besides the ArraySource interface (`.arrays`, `labels()`), `.attributes` holds the
  per-face attribute arrays of `render_faces` and `.object_ids` the face ids, in record order.
  """

  def __init__(self, seed: int, object_ids: np.ndarray, *, image_size: int = 32,
               name: str = "faces"):
    ids = np.asarray(object_ids, np.int64).reshape(-1)
    contiguous = ids.size > 0 and np.array_equal(ids, np.arange(ids[0], ids[0] + ids.size))
    out = (_cached_render(int(seed), int(ids[0]), int(ids[0] + ids.size), image_size)
           if contiguous else render_faces(seed, ids, image_size=image_size))
    super().__init__({"image": out["images"], "label": out["labels"]},
                     num_classes=len(FACE_CLASSES), class_names=FACE_CLASSES, name=name)
    self.attributes = out["attributes"]
    self.object_ids = ids


def faces_source(split: str, *, data_dir: str | None = None, seed: int = 0,
                 num_train: int = 10000, num_test: int = 1000, num_aux: int = 1000,
                 image_size: int = 32) -> FaceSource:
  """The registered procedural faces (`render_faces`), registered as source 'faces'.

  Splits (disjoint id blocks): 'train' [0, num_train), 'test' [num_train, num_train +
  num_test), 'aux' the next num_aux ids (e.g. for an in-domain evaluation classifier).
  data_dir is unused (the faces are drawn in memory in seconds).
  """
  del data_dir
  if split not in SPLITS:
    raise ConfigError("data.split", split, f"one of {', '.join(SPLITS)} for source 'faces'")
  for key, value in (("num_train", num_train), ("num_test", num_test), ("num_aux", num_aux)):
    if int(value) < 0:
      raise ConfigError(f"data.{key}", value, "a non-negative number of faces")
  ids = split_ids(split, int(num_train), int(num_test), int(num_aux))
  return FaceSource(seed, ids, image_size=image_size, name=f"faces/{split}")
