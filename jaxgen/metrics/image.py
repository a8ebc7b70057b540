"""Full-reference image metrics: PSNR and SSIM, per image, in JAX.

Both take NHWC batches (uint8 in [0, 255] or float on the scale given by `data_range`) and return
one value per image, shape (N,). A single HWC image gives a scalar. They are jittable
(`data_range` is an ordinary argument; the SSIM window parameters are Python constants).
The scale is never guessed: uint8 means [0, 255]; float images need an explicit `data_range`
(1.0 for [0, 1], 2.0 for [-1, 1], 255.0 for [0, 255]), else a one-line DataError.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.errors import DataError
from jaxgen.metrics.dtypes import working_float_dtype

# Wang et al. 2004, Sec. III-C: 11x11 circular-symmetric Gaussian, sigma 1.5, K1 0.01, K2 0.03.
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # int(3.5 * 1.5 + 0.5), the 11-tap window scikit-image uses with gaussian_weights
SSIM_K1 = 0.01
SSIM_K2 = 0.03


VALUE_RANGES = ((-1.0, 1.0), (0.0, 1.0), (0.0, 255.0))


def scale_to_unit_range(images: jax.Array, value_range: tuple[float, float] | None, what: str
                        ) -> jax.Array:
  """uint8 [0, 255] -> float32 [-1, 1]; float images need their `value_range` stated, one of
  VALUE_RANGES (a float image's scale is never guessed: [0, 1] read as [-1, 1] would silently
  shift every distance)."""
  images = jnp.asarray(images)
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 127.5 - 1.0
  if value_range is None or tuple(float(v) for v in value_range) not in VALUE_RANGES:
    raise DataError(f"{what}: float images with value_range={value_range!r}; expected uint8 images "
                    "or value_range=(-1, 1), (0, 1) or (0, 255)")
  lo, hi = (float(v) for v in value_range)
  return (images.astype(jnp.float32) - lo) * (2.0 / (hi - lo)) - 1.0


def resolve_data_range(x: jax.Array, y: jax.Array, data_range: float | jax.Array | None,
                       name: str) -> float | jax.Array:
  """255 for two uint8 inputs when `data_range` is None; any other input needs it explicitly."""
  if isinstance(data_range, jax.Array):  # traced under jit: checked by the caller
    return data_range
  if data_range is not None:
    if not (isinstance(data_range, (int, float, np.floating, np.integer)) and data_range > 0):
      raise DataError(f"{name}: data_range={data_range!r}; expected a positive number (the pixel "
                      "scale's peak-to-peak range)")
    return float(data_range)
  dtypes = {jnp.asarray(x).dtype, jnp.asarray(y).dtype}
  if dtypes == {jnp.dtype(jnp.uint8)}:
    return 255.0
  raise DataError(f"{name}: images of dtype {'/'.join(sorted(str(d) for d in dtypes))} without "
                  "data_range; expected uint8 images or an explicit data_range (1.0 for [0, 1], "
                  "2.0 for [-1, 1], 255.0 for [0, 255])")


def _as_batch(x: jax.Array, y: jax.Array, name: str) -> tuple[jax.Array, jax.Array, bool]:
  """Checks shapes, promotes HWC to 1HWC, casts to the working float dtype."""
  x, y = jnp.asarray(x), jnp.asarray(y)
  if x.shape != y.shape:
    raise DataError(f"{name}: image shapes differ, {x.shape} vs {y.shape}; "
                    "expected equal NHWC shapes")
  if x.ndim not in (3, 4):
    raise DataError(f"{name}: image shape {x.shape} is not NHWC (or HWC); expected 3 or 4 dims")
  single = x.ndim == 3
  if single:
    x, y = x[None], y[None]
  dt = working_float_dtype()
  return x.astype(dt), y.astype(dt), single


def psnr(x: jax.Array, y: jax.Array, data_range: float | None = None) -> jax.Array:
  """Peak signal-to-noise ratio per image, in dB.

  PSNR = 10 log10(data_range^2 / MSE), MSE the mean squared error over H, W and C of one image
  (the standard definition, e.g. Wang et al. 2004 eq. 1 context; identical to
  `skimage.metrics.peak_signal_noise_ratio` applied to each image). Identical images give +inf.

  Args:
    x: reference images, NHWC (or HWC), uint8 or float.
    y: test images, same shape.
    data_range: peak-to-peak range of the pixel scale; None only for uint8 inputs (255).

  Returns:
    (N,) PSNR values (a scalar for a single HWC image).
  """
  data_range = resolve_data_range(x, y, data_range, "psnr")
  x, y, single = _as_batch(x, y, "psnr")
  mse = jnp.mean(jnp.square(x - y), axis=(1, 2, 3))
  out = 10.0 * jnp.log10(jnp.square(jnp.asarray(data_range, x.dtype)) / mse)
  return out[0] if single else out


def _gaussian_taps(dtype) -> jax.Array:
  r = np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=np.float64)
  w = np.exp(-0.5 * (r / SSIM_SIGMA) ** 2)
  return jnp.asarray(w / w.sum(), dtype)


def _valid_blur(maps: jax.Array) -> jax.Array:
  """Separable 11-tap Gaussian, 'valid' region only, depthwise over the channel axis of NHWC."""
  taps = _gaussian_taps(maps.dtype)
  c = maps.shape[-1]
  dn = ("NHWC", "HWIO", "NHWC")
  kh = jnp.tile(taps.reshape(-1, 1, 1, 1), (1, 1, 1, c))
  kw = jnp.tile(taps.reshape(1, -1, 1, 1), (1, 1, 1, c))
  hi = jax.lax.Precision.HIGHEST  # TF32 on GPUs would cost ~3 digits of SSIM
  out = jax.lax.conv_general_dilated(maps, kh, (1, 1), "VALID", dimension_numbers=dn,
                                     feature_group_count=c, precision=hi)
  return jax.lax.conv_general_dilated(out, kw, (1, 1), "VALID", dimension_numbers=dn,
                                      feature_group_count=c, precision=hi)


def ssim(x: jax.Array, y: jax.Array, data_range: float | None = None) -> jax.Array:
  """Mean structural similarity per image (Wang et al. 2004, "Image quality assessment: from
  error visibility to structural similarity", eq. 13 with the Gaussian window of Sec. III-C).

  Local statistics use an 11x11 Gaussian window (sigma 1.5) with population (co)variances;
  SSIM(x, y) = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 +
  sigma_y^2 + C2)), C1 = (0.01 L)^2, C2 = (0.03 L)^2, L = data_range. The map is averaged over
  the region where the window fits entirely inside the image (a 5-pixel border is dropped) and
  over channels. This equals scikit-image's `structural_similarity(x, y, gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=L, channel_axis=-1)` per image.

  Args:
    x: reference images, NHWC (or HWC), uint8 or float, H and W at least 11.
    y: test images, same shape.
    data_range: peak-to-peak range of the pixel scale; None only for uint8 inputs (255).

  Returns:
    (N,) SSIM values in [-1, 1] (a scalar for a single HWC image).
  """
  data_range = resolve_data_range(x, y, data_range, "ssim")
  x, y, single = _as_batch(x, y, "ssim")
  win = 2 * SSIM_RADIUS + 1
  if x.shape[1] < win or x.shape[2] < win:
    raise DataError(f"ssim: images of {x.shape[1]}x{x.shape[2]} pixels are smaller than the "
                    f"{win}x{win} window; expected H, W >= {win}")
  # Working on the [0, 1] scale keeps uxx - ux^2 well conditioned in float32.
  x = x / data_range
  y = y / data_range
  c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
  maps = _valid_blur(jnp.concatenate([x, y, x * x, y * y, x * y], axis=-1))
  ux, uy, uxx, uyy, uxy = jnp.split(maps, 5, axis=-1)
  vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
  num = (2 * ux * uy + c1) * (2 * vxy + c2)
  den = (ux * ux + uy * uy + c1) * (vx + vy + c2)
  out = jnp.mean(num / den, axis=(1, 2, 3))
  return out[0] if single else out

