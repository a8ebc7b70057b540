"""Geometry of the renderer's object classes as unions of convex pieces.

Every class is a convex solid (the capsule is the union of three convex pieces). A piece is the
intersection of half-spaces `n . x <= h` (unit normals) with at most one quadric region
`|(x - c) * s|^2 <= 1` (an ellipsoid; a zero entry of `s` leaves that axis unbounded, so
`s = (1/r, 0, 1/r)` is an infinite vertical cylinder and `s = 0` means "no quadric"). Ray
intersection with such a piece is analytic (slab method for the planes, a quadratic for the
quadric), see `jaxgen.data.renderer`.

Local frame: y is up, +z is the object's front, the solid spans y in [-half_height, half_height].
The classes are chosen so that single views are ambiguous and several views resolve them:
sphere / ellipsoid (seen along its long axis) / capsule (seen end-on) all give discs; cube / box
(seen end-on) give squares; cylinder / hexagonal prism and cone / square pyramid / tetrahedron /
triangular prism (seen end-on) give near-identical silhouettes from some yaws.
"""

from __future__ import annotations

import dataclasses

import numpy as np

SHAPE_CLASSES: tuple[str, ...] = (
    "sphere", "ellipsoid", "capsule", "cylinder", "cone", "hexagonal_prism",
    "cube", "box", "square_pyramid", "tetrahedron", "octahedron", "triangular_prism",
)
# Two groups for the background-shift variant (paper 001 sec. 4.4: waterbird / landbird):
# 0 = curved or nearly curved solids, 1 = polyhedra with few faces.
SHAPE_GROUPS: tuple[int, ...] = (0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1)

# Number of uniforms each class consumes (columns 0..3 of the per-object draw).
NUM_SHAPE_UNIFORMS = 4
# Sides of the polygonal cone; its side normals are smoothed so shading looks round.
CONE_SIDES = 16


@dataclasses.dataclass(frozen=True)
class Pieces:
  """Per-object convex pieces of one class, batched over n objects.

  planes: [n, K, P, 4] float, (unit normal, offset); inside iff normal . x <= offset.
  smooth: [n, K, P] float, 1 where the plane facets a surface of revolution about y (its shading
    normal is rotated to the hit point's azimuth).
  quad_center, quad_inv_scale: [n, K, 3] float, the quadric of each piece (see module doc).
  half_height: [n] float, half the vertical extent (the floor sits at -half_height).
  """

  planes: np.ndarray
  smooth: np.ndarray
  quad_center: np.ndarray
  quad_inv_scale: np.ndarray
  half_height: np.ndarray


def _lerp(u: np.ndarray, lo: float, hi: float) -> np.ndarray:
  return lo + (hi - lo) * u


def _unit_planes(normals: np.ndarray, offsets: np.ndarray) -> np.ndarray:
  """Normalises (normal, offset) rows so distances along rays are in world units."""
  norm = np.linalg.norm(normals, axis=-1, keepdims=True)
  return np.concatenate([normals / norm, offsets[..., None] / norm], axis=-1)


def _caps(half_height: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  n = half_height.shape[0]
  normals = np.broadcast_to(np.array([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]]), (n, 2, 3))
  return normals, np.stack([half_height, half_height], axis=1)


def _prism(sides: int, apothem: np.ndarray, half_height: np.ndarray, phase: float):
  """Vertical right prism: `sides` side planes at distance `apothem` plus top and bottom caps."""
  theta = phase + 2.0 * np.pi * np.arange(sides) / sides
  side_n = np.stack([np.cos(theta), np.zeros(sides), np.sin(theta)], axis=-1)
  side_n = np.broadcast_to(side_n, (apothem.shape[0], sides, 3))
  side_h = np.broadcast_to(apothem[:, None], (apothem.shape[0], sides))
  cap_n, cap_h = _caps(half_height)
  return np.concatenate([side_n, cap_n], 1), np.concatenate([side_h, cap_h], 1)


def _pyramid(sides: int, radius: np.ndarray, half_height: np.ndarray, phase: float):
  """Right pyramid, apex at y=+h, base polygon with inradius `radius` at y=-h.

  Side k is cos(t_k) x + sin(t_k) z <= radius (h - y) / (2h), i.e. normal (cos, r/2h, sin)
  with offset r/2 before normalisation.
  """
  n = radius.shape[0]
  theta = phase + 2.0 * np.pi * np.arange(sides) / sides
  slope = (radius / (2.0 * half_height))[:, None]
  side_n = np.stack([np.broadcast_to(np.cos(theta), (n, sides)),
                     np.broadcast_to(slope, (n, sides)),
                     np.broadcast_to(np.sin(theta), (n, sides))], axis=-1)
  side_h = np.broadcast_to((radius / 2.0)[:, None], (n, sides))
  base_n = np.broadcast_to(np.array([[0.0, -1.0, 0.0]]), (n, 1, 3))
  return (np.concatenate([side_n, base_n], 1),
          np.concatenate([side_h, half_height[:, None]], 1))


def _box(ax: np.ndarray, ay: np.ndarray, az: np.ndarray):
  n = ax.shape[0]
  normals = np.broadcast_to(np.concatenate([np.eye(3), -np.eye(3)]), (n, 6, 3))
  return normals, np.stack([ax, ay, az, ax, ay, az], axis=1)


def _triangular_prism(half_length: np.ndarray, half_width: np.ndarray, half_height: np.ndarray):
  """Prism along x with an isosceles cross-section: base at y=-h (z in [-w, w]), ridge at y=+h."""
  n = half_length.shape[0]
  zero, one = np.zeros(n), np.ones(n)
  normals = np.stack([
      np.stack([one, zero, zero], -1), np.stack([-one, zero, zero], -1),
      np.stack([zero, -one, zero], -1),
      # Slanted sides through (z=+-w, y=-h) and (0, +h): 2h|z| + w y <= w h.
      np.stack([zero, half_width, 2.0 * half_height], -1),
      np.stack([zero, half_width, -2.0 * half_height], -1)], axis=1)
  offsets = np.stack([half_length, half_length, half_height,
                      half_width * half_height, half_width * half_height], axis=1)
  return normals, offsets


def _one_piece(normals: np.ndarray, offsets: np.ndarray, half_height: np.ndarray,
               smooth: np.ndarray | None = None, quad_inv_scale: np.ndarray | None = None) -> Pieces:
  n = half_height.shape[0]
  p = normals.shape[1]
  planes = _unit_planes(normals, offsets)[:, None]
  sm = np.zeros((n, 1, p)) if smooth is None else np.broadcast_to(smooth, (n, p))[:, None]
  qs = np.zeros((n, 1, 3)) if quad_inv_scale is None else quad_inv_scale[:, None]
  return Pieces(planes, sm.astype(np.float64), np.zeros((n, 1, 3)), qs, half_height)


def build_pieces(class_name: str, u: np.ndarray) -> Pieces:
  """Geometry of `class_name` for each row of uniforms `u` [n, NUM_SHAPE_UNIFORMS] in [0, 1).

  u[:, 0] is an overall scale, u[:, 1:4] the class's proportions; the ranges keep every object
  inside a radius of about 1 so it fits the camera frustum of `jaxgen.data.renderer`.
  """
  s = _lerp(u[:, 0], 0.8, 1.0)
  p1, p2, p3 = u[:, 1], u[:, 2], u[:, 3]
  n = u.shape[0]
  empty = (np.zeros((n, 0, 3)), np.zeros((n, 0)))
  if class_name == "sphere":
    r = s * _lerp(p1, 0.5, 0.75)
    return _one_piece(*empty, r, quad_inv_scale=np.stack([1 / r] * 3, -1))
  if class_name == "ellipsoid":
    # Prolate along x: seen along x it is a disc, like a sphere.
    a = s * _lerp(p1, 0.8, 1.0)
    b = a * _lerp(p2, 0.45, 0.62)
    return _one_piece(*empty, b, quad_inv_scale=np.stack([1 / a, 1 / b, 1 / b], -1))
  if class_name == "capsule":
    # Lying along x: seen end-on it is a disc.
    r = s * _lerp(p1, 0.32, 0.45)
    half_len = s * _lerp(p2, 0.3, 0.5)
    normals = np.broadcast_to(np.array([[1.0, 0, 0], [-1.0, 0, 0]]), (n, 2, 3))
    offsets = np.stack([half_len, half_len], 1)
    planes = np.stack([_unit_planes(normals, offsets),
                       np.broadcast_to(np.array([0.0, 0, 0, 1.0]), (n, 2, 4)),
                       np.broadcast_to(np.array([0.0, 0, 0, 1.0]), (n, 2, 4))], axis=1)
    zero = np.zeros(n)
    centers = np.stack([np.zeros((n, 3)), np.stack([half_len, zero, zero], -1),
                        np.stack([-half_len, zero, zero], -1)], axis=1)
    inv_r = 1.0 / r
    qs = np.stack([np.stack([zero, inv_r, inv_r], -1), np.stack([inv_r] * 3, -1),
                   np.stack([inv_r] * 3, -1)], axis=1)
    return Pieces(planes, np.zeros((n, 3, 2)), centers, qs, r)
  if class_name == "cylinder":
    r = s * _lerp(p1, 0.4, 0.6)
    h = s * _lerp(p2, 0.5, 0.8)
    normals, offsets = _caps(h)
    return _one_piece(normals, offsets, h, quad_inv_scale=np.stack([1 / r, 0 * r, 1 / r], -1))
  if class_name == "cone":
    r = s * _lerp(p1, 0.5, 0.72)
    h = s * _lerp(p2, 0.5, 0.8)
    normals, offsets = _pyramid(CONE_SIDES, r, h, 0.0)
    smooth = np.concatenate([np.ones(CONE_SIDES), np.zeros(1)])
    return _one_piece(normals, offsets, h, smooth=smooth)
  if class_name == "hexagonal_prism":
    r = s * _lerp(p1, 0.42, 0.62)
    h = s * _lerp(p2, 0.5, 0.8)
    return _one_piece(*_prism(6, r * np.cos(np.pi / 6), h, np.pi / 6), h)
  if class_name == "cube":
    a = s * _lerp(p1, 0.42, 0.56)
    return _one_piece(*_box(a, a, a), a)
  if class_name == "box":
    # Long along x, square cross-section: seen end-on it is a square, like a cube.
    ax = s * _lerp(p1, 0.75, 0.95)
    ayz = ax * _lerp(p2, 0.4, 0.6)
    return _one_piece(*_box(ax, ayz, ayz), ayz)
  if class_name == "square_pyramid":
    r = s * _lerp(p1, 0.45, 0.62)
    h = s * _lerp(p2, 0.5, 0.8)
    return _one_piece(*_pyramid(4, r, h, np.pi / 4), h)
  if class_name == "tetrahedron":
    r = s * _lerp(p1, 0.35, 0.5)
    h = s * _lerp(p2, 0.5, 0.8)
    return _one_piece(*_pyramid(3, r, h, np.pi / 2), h)
  if class_name == "octahedron":
    a = s * _lerp(p1, 0.6, 0.8)
    b = s * _lerp(p2, 0.7, 0.95)
    signs = np.array([[i, j, k] for i in (1, -1) for j in (1, -1) for k in (1, -1)], float)
    normals = signs[None] / np.stack([a, b, a], -1)[:, None]
    return _one_piece(normals, np.ones((n, 8)), b)
  if class_name == "triangular_prism":
    # Ridge along x: seen end-on it is a triangle, like a pyramid or cone from the side.
    half_len = s * _lerp(p1, 0.65, 0.9)
    w = s * _lerp(p2, 0.4, 0.55)
    h = s * _lerp(p3, 0.4, 0.6)
    return _one_piece(*_triangular_prism(half_len, w, h), h)
  raise ValueError(f"unknown shape class {class_name!r}; expected one of {SHAPE_CLASSES}")


def pad_pieces(pieces: Pieces, num_planes: int) -> Pieces:
  """Pads the plane axis to `num_planes` with always-satisfied planes (0 . x <= 1)."""
  n, k, p, _ = pieces.planes.shape
  if p == num_planes:
    return pieces
  pad = np.zeros((n, k, num_planes - p, 4))
  pad[..., 3] = 1.0
  return dataclasses.replace(
      pieces, planes=np.concatenate([pieces.planes, pad], axis=2),
      smooth=np.concatenate([pieces.smooth, np.zeros((n, k, num_planes - p))], axis=2))
