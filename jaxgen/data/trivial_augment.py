"""TrivialAugmentWide (Muller & Hutter 2021) as a pure, jittable JAX function.

Paper 000 IV-A augments the autoencoder's views with torchvision's `TrivialAugmentWide`; this
module reproduces what torchvision 0.29 does to a uint8 image tensor
(`torchvision/transforms/autoaugment.py` and the tensor path of `transforms/functional.py`), so
that the autoencoder sees the same augmentation distribution as in the paper. Per image: one of
the 14 operations is drawn uniformly, a magnitude bin uniformly from 31, and for signed operations
a sign with probability 1/2. Images are float32 NHWC in [-1, 1]; every operation works on the
uint8 view u = (x + 1) * 127.5.

The operations and their magnitude tables (`TrivialAugmentWide._augmentation_space(31)`):

  identity      -
  shear_x/y     m in linspace(0, 0.99), signed: F.affine(shear=degrees(atan(m)), center=[0, 0]),
                i.e. the source of output pixel (x, y) is x + m (y + 0.5) (resp. y + m (x + 0.5)):
                the shear is about the top-left image corner, not the centre.
  translate_x/y t = int(m), m in linspace(0, 32) pixels, signed: the source is x - t (content
                moves by +t; int truncates towards zero).
  rotate        a in linspace(0, 135) degrees, signed, counter-clockwise about the image centre.
  brightness    blend with black, factor 1 + m, m in linspace(0, 0.99), signed
  color         blend with the greyscale image, same factors
  contrast      blend with the mean of the greyscale image (one value per image), same factors
  sharpness     blend with the 3x3 smoothed image (kernel 1 1 1 / 1 5 1 / 1 1 1 over 13, rounded;
                the one-pixel border keeps the original pixels), same factors
  posterize     keep the top 8 - round(bin / 5) bits (8 .. 2)
  solarize      invert (255 - u) the pixels with u >= threshold, threshold in linspace(255, 0)
                (so bin 0 still inverts pure white pixels)
  autocontrast  per channel, stretch [min, max] to [0, 255] (a flat channel is unchanged)
  equalize      per channel, PIL's `ImageOps.equalize` lut (see `_equalize`)

Greyscale is torchvision's `rgb_to_grayscale`: 0.2989 R + 0.587 G + 0.114 B, truncated to uint8.
The blends are `_blend`: factor * a + (1 - factor) * b, clamped to [0, 255] and truncated.
Geometric operations sample with torchvision's grid (`_gen_affine_grid`: normalised coordinates,
align_corners=False), nearest neighbour rounding half to even, and fill the pixels whose source
lies outside the image (torchvision's default fill=None is 0, i.e. -1.0 here). The float32
magnitude tables are rebuilt bit for bit (torch's CPU linspace rounds `end - step * k` once, as a
fused multiply-add), and the affine matrices come from a transcription of torchvision's
`_get_inverse_affine_matrix` evaluated in double precision as torchvision does.

With the defaults the output is what torchvision produces on the uint8 image: on XLA:CPU all
14 x 31 x 2 (op, bin, sign) settings agree exactly with torchvision's `_apply_op` on the test
images, nearest-neighbour rounding ties included (tests/test_parity_trivial_augment.py). What is
left to float32 evaluation order: contrast's (1 - f) * mean product may still be fused into a
multiply-add by XLA (only the integer-valued products are protected, see `_product`), which can
move a pixel by one grey level when its value lands within ~1e-5 of an integer, and the
geometric grid is summed in our order rather than torch's bmm order, which can only matter at
an exact x.5 source coordinate; neither was observed. Not checked on GPU.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness",
       "color", "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")
NUM_BINS = 31
INTERPOLATIONS = ("nearest", "bilinear")
_BLENDS = (6, 7, 8, 9)  # brightness, color, contrast, sharpness: blend with a degenerate image
_GREY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale (not PIL's 0.299)


def _torch_linspace(start: float, end: float, steps: int) -> np.ndarray:
  """`torch.linspace(start, end, steps)` (float32, CPU) bit for bit.

  torch's kernel computes step = (end - start) / (steps - 1) in float32, then start + step * k for
  the first half and end - step * (steps - 1 - k) for the rest, each as one fused multiply-add.
  The last bit matters: linspace(0, 32, 31)[15] is 15.999999, which TranslateX truncates to 15.
  """
  s, e = np.float32(start), np.float32(end)
  step = (e - s) / np.float32(steps - 1)
  k = np.arange(steps)
  # float32 * small integer is exact in float64, so one cast to float32 is one rounding (an fma).
  lo = np.float64(s) + np.float64(step) * k
  hi = np.float64(e) - np.float64(step) * (steps - 1 - k)
  return np.where(k < steps // 2, lo, hi).astype(np.float32)


def augmentation_space(height: int, width: int, translate_fraction: float | None = None,
                       num_bins: int = NUM_BINS) -> dict[str, tuple[np.ndarray, bool]]:
  """Per op: (float32 magnitudes [num_bins], signed), as `TrivialAugmentWide._augmentation_space`.

  Ops without a magnitude get a zero table (torchvision's scalar 0.0). With `translate_fraction`
  the translation range is linspace(0, fraction * width) for x and fraction * height for y instead
  of torchvision's absolute linspace(0, 32).
  """
  lin = functools.partial(_torch_linspace, steps=num_bins)
  zero = np.zeros(num_bins, np.float32)
  tx = 32.0 if translate_fraction is None else translate_fraction * width
  ty = 32.0 if translate_fraction is None else translate_fraction * height
  bits = np.round(np.arange(num_bins, dtype=np.float32) / np.float32((num_bins - 1) / 6))
  return {
      "identity": (zero, False),
      "shear_x": (lin(0.0, 0.99), True),
      "shear_y": (lin(0.0, 0.99), True),
      "translate_x": (lin(0.0, tx), True),
      "translate_y": (lin(0.0, ty), True),
      "rotate": (lin(0.0, 135.0), True),
      "brightness": (lin(0.0, 0.99), True),
      "color": (lin(0.0, 0.99), True),
      "contrast": (lin(0.0, 0.99), True),
      "sharpness": (lin(0.0, 0.99), True),
      "posterize": ((8 - bits).astype(np.float32), False),
      "solarize": (lin(255.0, 0.0), False),
      "autocontrast": (zero, False),
      "equalize": (zero, False),
  }


def _inverse_affine_matrix(center: list[float], angle: float, translate: list[float], scale: float,
                           shear: list[float]) -> list[float]:
  """torchvision's `_get_inverse_affine_matrix(..., inverted=True)`, in double precision."""
  rot = math.radians(angle)
  sx, sy = math.radians(shear[0]), math.radians(shear[1])
  cx, cy = center
  tx, ty = translate
  a = math.cos(rot - sy) / math.cos(sy)
  b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
  c = math.sin(rot - sy) / math.cos(sy)
  d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
  matrix = [x / scale for x in [d, -b, 0.0, -c, a, 0.0]]
  matrix[2] += matrix[0] * (-cx - tx) + matrix[1] * (-cy - ty)
  matrix[5] += matrix[3] * (-cx - tx) + matrix[4] * (-cy - ty)
  matrix[2] += cx
  matrix[5] += cy
  return matrix


def _geometric_matrix(name: str, magnitude: float, height: int, width: int) -> list[float]:
  """The inverse matrix torchvision's `_apply_op` hands to the tensor affine / rotate."""
  if name in ("shear_x", "shear_y"):
    shear_deg = math.degrees(math.atan(magnitude))
    shear = [shear_deg, 0.0] if name == "shear_x" else [0.0, shear_deg]
    # center=[0, 0] (the top-left corner) becomes [0 - w / 2, 0 - h / 2] in centred coordinates.
    return _inverse_affine_matrix([-width * 0.5, -height * 0.5], 0.0, [0.0, 0.0], 1.0, shear)
  if name in ("translate_x", "translate_y"):
    t = float(int(magnitude))  # torchvision passes translate=[int(magnitude), 0]
    translate = [t, 0.0] if name == "translate_x" else [0.0, t]
    return _inverse_affine_matrix([0.0, 0.0], 0.0, translate, 1.0, [0.0, 0.0])
  if name == "rotate":  # F.rotate negates the angle for the affine convention
    return _inverse_affine_matrix([0.0, 0.0], -magnitude, [0.0, 0.0], 1.0, [0.0, 0.0])
  return [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


@functools.lru_cache(maxsize=32)
def _tables(height: int, width: int, translate_fraction: float | None) -> dict[str, np.ndarray]:
  """Per (op, bin, negate) parameters [14, 31, 2, ...], computed on the host as torchvision does."""
  space = augmentation_space(height, width, translate_fraction)
  shape = (len(OPS), NUM_BINS, 2)
  theta = np.zeros(shape + (2, 3), np.float32)
  ratio = np.ones(shape, np.float32)
  one_minus = np.zeros(shape, np.float32)
  step = np.ones(shape, np.float32)
  threshold = np.full(shape, 256.0, np.float32)  # nothing is >= 256: solarize off
  scale = np.asarray([[0.5 * width], [0.5 * height]], np.float32)
  for op, name in enumerate(OPS):
    mags, signed = space[name]
    for b in range(NUM_BINS):
      for neg in range(2):
        m = float(mags[b]) * (-1.0 if (signed and neg) else 1.0)
        # `_gen_affine_grid` divides theta's rows by (w / 2, h / 2) in float32.
        theta[op, b, neg] = np.asarray(_geometric_matrix(name, m, height, width),
                                       np.float32).reshape(2, 3) / scale
        if op in _BLENDS:
          r = 1.0 + m  # adjust_*(img, 1.0 + magnitude); `_blend` takes (1.0 - ratio) in double
          ratio[op, b, neg], one_minus[op, b, neg] = r, 1.0 - r
        elif name == "posterize":
          step[op, b, neg] = 2.0 ** (8 - int(m))
        elif name == "solarize":
          threshold[op, b, neg] = m
  return {"theta": theta, "ratio": _split(ratio), "one_minus": _split(one_minus), "step": step,
          "threshold": threshold}


def _split(x: np.ndarray) -> np.ndarray:
  """[..., 2]: float32 x as hi + lo, each with at most 12 significant bits (hi: x's top 12)."""
  x = np.asarray(x, np.float32)
  hi = (x.view(np.uint32) & np.uint32(0xFFFFF000)).view(np.float32)
  return np.stack([hi, x - hi], -1)


def _product(factor: jax.Array, v: jax.Array) -> jax.Array:
  """float32 factor * v rounded once, as torch computes it, even where XLA fuses multiply-adds.

  factor is `_split`'s (hi, lo). torchvision's `_blend` rounds ratio * a and (1 - ratio) * b to
  float32 before adding them; XLA (CPU and GPU) contracts such a sum into a fused multiply-add,
  which skips one rounding and moves about 1% of the truncated sharpness / color pixels by a grey
  level. For v an integer <= 255 (the uint8 grid), hi * v and lo * v are exact in float32, so
  their sum is rounded exactly once whether or not the compiler fuses it.
  """
  return factor[0] * v + factor[1] * v


def _warp(u: jax.Array, theta: jax.Array, fill: jax.Array, interpolation: str) -> jax.Array:
  """torchvision's tensor affine: `_gen_affine_grid` + `grid_sample(align_corners=False)`.

  theta [2, 3] is the inverse matrix already divided by (w / 2, h / 2): it maps centred output
  pixel coordinates to normalised source coordinates. Sources outside the image take `fill`.
  """
  h, w, c = u.shape
  xc = jnp.arange(w, dtype=jnp.float32) - (w * 0.5 - 0.5)  # pixel centres, origin at the centre
  yc = jnp.arange(h, dtype=jnp.float32)[:, None] - (h * 0.5 - 0.5)
  gx = xc * theta[0, 0] + yc * theta[0, 1] + theta[0, 2]
  gy = xc * theta[1, 0] + yc * theta[1, 1] + theta[1, 2]
  ix = (gx + 1.0) * (w * 0.5) - 0.5  # grid_sample's unnormalize, align_corners=False
  iy = (gy + 1.0) * (h * 0.5) - 0.5
  flat = u.reshape(h * w, c)

  def tap(yi, xi):
    inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
    idx = jnp.clip(yi, 0, h - 1).astype(jnp.int32) * w + jnp.clip(xi, 0, w - 1).astype(jnp.int32)
    return flat[idx.reshape(-1)].reshape(h, w, c), inside[..., None]

  if interpolation == "nearest":
    vals, inside = tap(jnp.round(iy), jnp.round(ix))  # jnp.round: half to even, as nearbyint
    return jnp.where(inside, vals, fill)
  x0, y0 = jnp.floor(ix), jnp.floor(iy)
  wx, wy = ix - x0, iy - y0
  out = jnp.zeros_like(u)
  coverage = jnp.zeros((h, w, 1), u.dtype)
  for dy, dx, wt in ((0, 0, (1 - wy) * (1 - wx)), (0, 1, (1 - wy) * wx), (1, 0, wy * (1 - wx)),
                     (1, 1, wy * wx)):
    vals, inside = tap(y0 + dy, x0 + dx)
    wt = jnp.where(inside, wt[..., None], 0.0)
    out, coverage = out + wt * vals, coverage + wt
  return out + (1.0 - coverage) * fill


def _grey(u: jax.Array, quantize: bool) -> jax.Array:
  """torchvision's rgb_to_grayscale [H, W, 1], truncated to uint8 when quantizing."""
  r, g, b = u[..., 0:1], u[..., 1:2], u[..., 2:3]
  grey = jnp.float32(_GREY[0]) * r + jnp.float32(_GREY[1]) * g + jnp.float32(_GREY[2]) * b
  return jnp.floor(grey) if quantize else grey


def _smooth(u: jax.Array, quantize: bool) -> jax.Array:
  """`_blurred_degenerate_image`: the 3x3 kernel (1 1 1 / 1 5 1 / 1 1 1) / 13 on the interior.

  The weighted sum is an integer S on the uint8 grid and S / 13 is never within 1/26 of a
  half-integer, so round(S / 13) is what torchvision's float conv + round gives. The one-pixel
  border keeps the original pixels (torchvision writes the 'valid' conv into [1:-1, 1:-1]).
  """
  h, w = u.shape[:2]
  s = 4.0 * u[1:-1, 1:-1] + sum(u[i:i + h - 2, j:j + w - 2] for i in range(3) for j in range(3))
  blurred = s / 13.0
  if quantize:
    blurred = jnp.round(blurred)
  return u.at[1:-1, 1:-1].set(blurred)


def _autocontrast(u: jax.Array, quantize: bool) -> jax.Array:
  """torchvision's autocontrast: (u - min) * (255 / (max - min)) per channel; flat: unchanged."""
  lo = u.min(axis=(0, 1), keepdims=True)
  hi = u.max(axis=(0, 1), keepdims=True)
  scale = 255.0 / (hi - lo)
  flat = ~jnp.isfinite(scale)
  out = jnp.clip((u - jnp.where(flat, 0.0, lo)) * jnp.where(flat, 1.0, scale), 0.0, 255.0)
  return jnp.floor(out) if quantize else out


def _equalize(q: jax.Array) -> tuple[jax.Array, jax.Array]:
  """PIL's `ImageOps.equalize` (= torchvision's `_scale_channel`) lut applied per channel.

  q: integer-valued [H, W, C]. With hist the 256-bin histogram of a channel and L its largest
  level, step = (pixels - hist[L]) // 255; lut[i] = (sum(hist[:i]) + step // 2) // step, clipped
  to 255. Returns (equalised, unchanged [1, 1, C]) where unchanged marks step == 0 (a flat
  channel, or too few pixels below the top level): PIL and torchvision leave those channels as is.
  """
  h, w, c = q.shape
  qi = jnp.clip(q, 0, 255).astype(jnp.int32).reshape(h * w, c)
  hist = jax.vmap(lambda v: jnp.bincount(v, length=256), in_axes=1)(qi)  # [C, 256]
  below = jnp.cumsum(hist, axis=1) - hist  # pixels strictly below each level
  top = jnp.take_along_axis(hist, qi.max(axis=0)[:, None], axis=1)[:, 0]
  step = (h * w - top) // 255
  lut = jnp.clip((below + (step // 2)[:, None]) // jnp.maximum(step, 1)[:, None], 0, 255)
  out = jnp.take_along_axis(lut.T, qi, axis=0).reshape(h, w, c).astype(jnp.float32)
  return out, (step == 0)[None, None, :]


def _check(interpolation: str) -> None:
  if interpolation not in INTERPOLATIONS:
    raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")


def apply_op(image: jax.Array, op: jax.Array, magnitude_bin: jax.Array, negate: jax.Array, *,
             fill: float = -1.0, interpolation: str = "nearest",
             translate_fraction: float | None = None, quantize: bool = True) -> jax.Array:
  """Apply op `OPS[op]` at `magnitude_bin` (0..30), negated if `negate` and the op is signed.

  image: one [H, W, C] float32 image in [-1, 1] (C = 3; color/contrast need RGB). op, bin and
  negate may be traced, so a single compilation serves every op (the options are static). Used
  by `trivial_augment_wide` and by the tests to check each op against its reference.
  """
  _check(interpolation)
  h, w, _ = image.shape
  t = {k: jnp.asarray(v)[op, magnitude_bin, jnp.asarray(negate).astype(jnp.int32)]
       for k, v in _tables(h, w, translate_fraction).items()}
  u = jnp.clip((image.astype(jnp.float32) + 1.0) * 127.5, 0.0, 255.0)
  q = jnp.round(u)
  base = q if quantize else u
  fill_u = jnp.clip(jnp.float32((fill + 1.0) * 127.5), 0.0, 255.0)
  if quantize:
    fill_u = jnp.round(fill_u)

  warped = _warp(base, t["theta"], fill_u, interpolation)
  if quantize and interpolation == "bilinear":
    warped = jnp.round(warped)  # torchvision rounds grid_sample's float output back to uint8

  grey = _grey(base, quantize)
  degenerate = jnp.select(
      [op == 6, op == 7, op == 8],
      [jnp.zeros_like(base), jnp.broadcast_to(grey, base.shape),
       jnp.broadcast_to(grey.mean(), base.shape)],
      _smooth(base, quantize))
  blended = jnp.clip(_product(t["ratio"], base) + _product(t["one_minus"], degenerate), 0.0, 255.0)
  if quantize:
    blended = jnp.floor(blended)  # `_blend` casts back to uint8 by truncation
  if h <= 2 or w <= 2:  # adjust_sharpness returns tiny images unchanged
    blended = jnp.where(op == 9, base, blended)

  # posterize, solarize's comparison and equalize need integer levels: they use q in both modes.
  posterized = jnp.floor(q / t["step"]) * t["step"]  # u & -(2 ** (8 - bits))
  solarized = jnp.where(q >= t["threshold"], 255.0 - base, base)
  equalized, unchanged = _equalize(q)
  equalized = jnp.where(unchanged, base, equalized)

  out = jnp.select(
      [op == 0, (op >= 1) & (op <= 5), (op >= 6) & (op <= 9), op == 10, op == 11, op == 12],
      [base, warped, blended, posterized, solarized, _autocontrast(base, quantize)],
      equalized)
  # XLA may divide by multiplying with 1 / 127.5, which maps 255 to 1.0000001: clip to the range.
  return jnp.clip(out / 127.5 - 1.0, -1.0, 1.0)


def sample_params(key: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """TrivialAugmentWide's draw per image: (op index, magnitude bin, negate), each uniform.

  torchvision draws the sign only for signed ops; drawing it for every image and ignoring it for
  the unsigned ones gives the same distribution. One uniform draw over the 14 * 31 * 2 triples
  gives three independent uniform components (and compiles faster than three draws). Separate
  from `trivial_augment_wide` so that tests can check the draw and replay it through `apply_op`.
  """
  triple = jax.random.randint(key, (batch_size,), 0, len(OPS) * NUM_BINS * 2)
  return triple // (NUM_BINS * 2), (triple // 2) % NUM_BINS, triple % 2 == 1


def trivial_augment_wide(key: jax.Array, images: jax.Array, *, fill: float = -1.0,
                         interpolation: str = "nearest", translate_fraction: float | None = None,
                         quantize: bool = True) -> jax.Array:
  """Augment a batch [B, H, W, 3] in [-1, 1]: one random op at a random magnitude per image.

  The defaults are torchvision's `TrivialAugmentWide()` on uint8 images. Options, all static:
    fill: value in [-1, 1] for pixels whose source lies outside the image in the geometric ops.
      -1.0 (black) is torchvision's default fill=None (0).
    interpolation: "nearest" (torchvision's default) or "bilinear" (torchvision's other tensor
      mode). Deviation for bilinear with fill != -1.0: the pixels a sample misses are weighted by
      the fill once (out + (1 - coverage) * fill); torchvision computes
      coverage * (out - fill) + fill, which attenuates partially covered border pixels twice.
      With fill -1.0 both equal torchvision's fill=None.
    translate_fraction: None (torchvision): translations up to 32 pixels whatever the image size
      (at 64x64 half the image; at 32x32 the top bins shift everything out). A float f instead
      uses up to f * width / f * height pixels (32 / 224 reproduces torchvision's 224px ImageNet
      proportion at any size), still truncated to whole pixels as torchvision does.
    quantize: True (torchvision): the image is rounded to the uint8 grid first and every op
      returns uint8 levels as torchvision's uint8 tensor path does (blends and autocontrast
      truncate, greyscale truncates, the smoothed image rounds). False: work on the continuous
      u = (x + 1) * 127.5 without those roundings (no truncation bias, inputs off the uint8 grid
      kept); posterize, solarize's threshold test and equalize still use round(u) since they are
      defined on integer levels. On uint8-grid inputs the outputs then differ from the default
      by less than 2 grey levels on brightness / color / contrast / sharpness (untruncated blends
      and greyscale) and by less than 1 on autocontrast, and agree on the other ops.
  """
  _check(interpolation)
  ops, bins, negate = sample_params(key, images.shape[0])
  fn = functools.partial(apply_op, fill=fill, interpolation=interpolation,
                         translate_fraction=translate_fraction, quantize=quantize)
  return jax.vmap(fn)(images, ops, bins, negate)
