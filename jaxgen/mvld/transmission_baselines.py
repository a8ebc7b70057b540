"""Image-codec baselines for MVLD's transmission study, and rate-distortion comparison.

MVLD sends k of the V views as quantised latents (lossy, ~20 dB here). A fair comparison sends
the same k views with the lossy codecs a communications engineer would use, and treats the
unsent views the same two ways:
  - 'grey':     the receiver has no generative model and shows a mid-grey image;
  - 'generate': the receiver encodes the decoded views with MVLD's autoencoder and lets MVLD
                generate the unsent views from them (sent views keep the codec's pixels).
Codecs ('codec', parameter):
  - ('jpeg', q):       baseline JPEG, quality q. Counted bytes are the entropy-coded scan only:
                       both ends can agree on the quality-q tables, and the ~600-byte JFIF header
                       would otherwise dominate a 32x32 view. `file_bytes` keeps the whole file.
  - ('webp', q):       lossy WebP, quality q (whole file, ~26 bytes of container).
  - ('downsample', f): the view shrunk by f (box filter), sent as PNG, upsampled (bilinear).
  - ('png', 0):        lossless PNG (whole file).
Bytes per object include the view-mask header (ceil(V / 8) bytes), as for the latents.

`rd_front` and `bytes_at_psnr` turn rows into rate-distortion curves and "bytes needed for the
same PSNR" figures, linear interpolation in (log bytes, PSNR) along the Pareto front.
"""

from __future__ import annotations

import io
import math
from typing import Callable, Sequence

import jax
import numpy as np
from PIL import Image

from jaxgen.io.images import encode_png
from jaxgen.mvld import masking
from jaxgen.mvld.transmission import header_bytes, pooled_psnr

CODECS = ("jpeg", "webp", "downsample", "png")
FILLS = ("generate", "grey")
GREY = 128  # mid-grey uint8 value shown for views that were not sent


def _jpeg_scan_bytes(data: bytes) -> int:
  """Length of the entropy-coded data of a baseline JPEG: from the end of the SOS segment to EOI."""
  sos = data.find(b"\xff\xda")
  if sos < 0:
    raise ValueError("not a JPEG stream: no SOS marker")
  segment = int.from_bytes(data[sos + 2:sos + 4], "big")
  return len(data) - (sos + 2 + segment)


def _roundtrip_one(image: np.ndarray, codec: str, param: int) -> tuple[np.ndarray, int, int]:
  """(decoded uint8 HWC, counted bytes, file bytes) of one view."""
  pil = Image.fromarray(image)
  if codec == "png":
    data = encode_png(image)
    return image.copy(), len(data), len(data)
  if codec == "downsample":
    h, w = image.shape[:2]
    small = np.asarray(pil.resize((w // param, h // param), Image.BOX))
    data = encode_png(small)
    decoded = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))
    return decoded, len(data), len(data)
  buf = io.BytesIO()
  if codec == "jpeg":
    pil.save(buf, format="JPEG", quality=int(param))
  elif codec == "webp":
    pil.save(buf, format="WEBP", quality=int(param), method=6)
  else:
    raise ValueError(f"codec {codec!r}: expected one of {CODECS}")
  data = buf.getvalue()
  decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
  counted = _jpeg_scan_bytes(data) if codec == "jpeg" else len(data)
  return decoded, counted, len(data)


def codec_roundtrip(images: np.ndarray, codec: str, param: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """uint8 [..., H, W, 3] -> (what the receiver decodes, counted bytes [...], file bytes [...])."""
  flat = np.asarray(images, np.uint8).reshape((-1,) + images.shape[-3:])
  out = [_roundtrip_one(img, codec, param) for img in flat]
  lead = images.shape[:-3]
  return (np.stack([o[0] for o in out]).reshape(images.shape),
          np.asarray([o[1] for o in out]).reshape(lead), np.asarray([o[2] for o in out]).reshape(lead))


def schemes_from_config(cfg) -> list[tuple[str, int]]:
  """(codec, parameter) pairs of `transmission.baselines`."""
  return ([("jpeg", int(q)) for q in cfg.jpeg_qualities] +
          [("webp", int(q)) for q in cfg.webp_qualities] +
          [("downsample", int(f)) for f in cfg.downsample_factors] + ([("png", 0)] if cfg.png else []))


def _summary(per_view: dict[str, np.ndarray]) -> dict[str, float]:
  """Per-view metric arrays [..., N, V] -> the study's numbers: PSNR per object with the MSE
  pooled over its V views (as `transmission.object_psnr`), the rest means over views."""
  return {"psnr": pooled_psnr(per_view["mse"]), "ssim": float(np.mean(per_view["ssim"])),
          "lpips": float(np.mean(per_view["lpips"])), "coherence": float(np.mean(per_view["correct"]))}


def run_baselines(images: np.ndarray, labels: np.ndarray, judge_images: Callable,
                  generate_fn: Callable, *, schemes: Sequence[tuple[str, int]], fills: Sequence[str],
                  key: jax.Array) -> list[dict]:
  """Rows {codec, param, fill, views_sent, bytes, file_bytes, psnr, ssim, lpips, coherence}.

  images uint8 [N, V, H, W, 3]. For each k, every subset of k views is sent with each scheme;
  quality is over all V views, averaged over the subsets. `judge_images(generated, true, labels)`
  returns per-image arrays {mse, ssim, lpips, correct} (`evaluate.per_image_metrics`): a sent view
  is judged once per scheme and a grey view once, whatever the subset; only generated views are
  judged per subset. `generate_fn(key, received_images [M, V, H, W, 3], received [M, V]) -> uint8
  [M, V, H, W, 3]` fills the unsent views, one call per subset for all schemes (stacked on the
  batch). With k = V nothing is missing and the row's fill is 'none'.
  """
  n, v = images.shape[:2]
  shape = images.shape[2:]
  flat_true = images.reshape((-1,) + shape)
  flat_labels = np.repeat(labels, v)

  def judge(views: np.ndarray, true: np.ndarray, lab: np.ndarray) -> dict[str, np.ndarray]:
    return {m: np.asarray(a) for m, a in judge_images(views, true, lab).items()
            if m in ("mse", "ssim", "lpips", "correct")}

  decoded, counted, files, sent_metrics = {}, {}, {}, {}
  for scheme in schemes:
    decoded[scheme], counted[scheme], files[scheme] = codec_roundtrip(images, *scheme)
    per = judge(decoded[scheme].reshape((-1,) + shape), flat_true, flat_labels)
    sent_metrics[scheme] = {m: a.reshape((n, v)) for m, a in per.items()}
  grey = judge(np.full_like(flat_true, GREY), flat_true, flat_labels)
  grey = {m: a.reshape((n, v)) for m, a in grey.items()}
  rows = []
  hb = header_bytes(v)
  for k in range(1, v + 1):
    subsets = masking.subsets_of_size(v, k)
    fills_k = list(fills) if k < v else ["none"]
    per_fill = {(s, f): [] for s in schemes for f in fills_k}  # per subset: {metric: [N, V]}
    for j, subset in enumerate(subsets):
      sent = np.zeros((v,), bool)
      sent[list(subset)] = True
      unsent = np.flatnonzero(~sent)
      if "generate" in fills_k:
        stacked = np.concatenate([np.where(sent[None, :, None, None, None], decoded[s], np.uint8(GREY))
                                  for s in schemes])
        mask = np.broadcast_to(sent.astype(np.float32), (len(stacked), v))
        gen = np.asarray(generate_fn(jax.random.fold_in(key, 100 * k + j), stacked, mask))
        gen = gen[:, unsent].reshape((-1,) + shape)  # [S * N * (V - k)] in (scheme, object, view) order
        true = np.concatenate([images[:, unsent].reshape((-1,) + shape)] * len(schemes))
        lab = np.concatenate([np.repeat(labels, len(unsent))] * len(schemes))
        gen_metrics = {m: a.reshape((len(schemes), n, len(unsent))) for m, a in judge(gen, true, lab).items()}
      for i, s in enumerate(schemes):
        for f in fills_k:
          views = {m: a.copy() for m, a in sent_metrics[s].items()}
          for m in views:
            if f == "grey":
              views[m][:, unsent] = grey[m][:, unsent]
            elif f == "generate":
              views[m][:, unsent] = gen_metrics[m][i]
          per_fill[(s, f)].append(views)
    sends = subsets_mask(subsets, v).T.astype(np.int64)  # [V, subsets]
    for s in schemes:
      payload = float(np.mean(counted[s] @ sends)) + hb  # bytes of each object's sent views
      file_bytes = float(np.mean(files[s] @ sends)) + hb
      for f in fills_k:
        stacked_views = {m: np.stack([views[m] for views in per_fill[(s, f)]]) for m in per_fill[(s, f)][0]}
        rows.append({"codec": s[0], "param": s[1], "fill": f, "views_sent": k, "bytes": payload,
                     "file_bytes": file_bytes, **_summary(stacked_views)})
  return rows


def subsets_mask(subsets: Sequence[tuple[int, ...]], num_views: int) -> np.ndarray:
  """[num_subsets, V] booleans: which views each subset sends (for per-object byte sums)."""
  mask = np.zeros((len(subsets), num_views), bool)
  for j, subset in enumerate(subsets):
    mask[j, list(subset)] = True
  return mask


def rd_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
  """The Pareto front of (bytes, psnr) points: by increasing bytes, each strictly better in PSNR
  than every cheaper point."""
  front = []
  for b, q in sorted(points, key=lambda p: (p[0], -p[1])):
    if not front or q > front[-1][1]:
      front.append((float(b), float(q)))
  return front


def bytes_at_psnr(points: Sequence[tuple[float, float]], target: float) -> tuple[float | None, str]:
  """Bytes a scheme needs to reach PSNR `target`, from its (bytes, psnr) points.

  Returns (bytes, how): 'interpolated' between the two front points around the target (linear in
  log bytes), 'at most' when even the cheapest point exceeds it (its bytes are an upper bound),
  or (None, 'not reached') when no point reaches it.
  """
  front = rd_front(points)
  if not front or front[-1][1] < target:
    return None, "not reached"
  if front[0][1] >= target:
    return front[0][0], "at most"
  for (b0, q0), (b1, q1) in zip(front, front[1:]):
    if q0 < target <= q1 and math.isinf(q1):  # lossless: no curve to interpolate along
      return b1, "at most"
    if q0 < target <= q1:
      w = (target - q0) / (q1 - q0)
      return float(math.exp(math.log(b0) + w * (math.log(b1) - math.log(b0)))), "interpolated"
  raise AssertionError("unreachable: the front is increasing in PSNR")


def family(row: dict) -> str:
  """Display name of a row's scheme family (one RD curve each)."""
  if "codec" not in row:
    return "MVLD latents"
  name = {"jpeg": "JPEG", "webp": "WebP", "downsample": "downsampled PNG", "png": "PNG"}[row["codec"]]
  return f"{name} + {row['fill']}" if row["fill"] != "none" else f"{name} (all sent)"


def family_points(baseline_rows: Sequence[dict]) -> dict[str, list[tuple[float, float]]]:
  """{family: [(bytes, psnr), ...]}; rows with every view sent ('none') join both fills' families,
  since sending everything is a valid operating point of either receiver."""
  families: dict[str, list[tuple[float, float]]] = {}
  for r in baseline_rows:
    for f in (FILLS if r["fill"] == "none" else [r["fill"]]):
      families.setdefault(family({**r, "fill": f}), []).append((r["bytes"], r["psnr"]))
  return families


def equal_psnr_table(mvld_rows: Sequence[dict], baseline_rows: Sequence[dict]) -> list[dict]:
  """For each point on MVLD's RD front: the bytes every baseline family needs for its PSNR.

  Families are codec + fill (`family_points`).
  """
  families = family_points(baseline_rows)
  front = rd_front([(r["bytes"], r["psnr"]) for r in mvld_rows])
  out = []
  for b, q in front:
    row = next(r for r in mvld_rows if r["bytes"] == b and r["psnr"] == q)
    needs = {}
    for name, pts in sorted(families.items()):
      need, how = bytes_at_psnr(pts, q)
      needs[name] = {"bytes": need, "how": how, "ratio": None if need is None else need / b}
    out.append({"views_sent": row["views_sent"], "bits": row["bits"], "bytes": b, "psnr": q,
                "baselines": needs})
  return out
