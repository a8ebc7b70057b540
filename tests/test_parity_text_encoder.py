"""Opt-in transformers parity of the text encoder and CLIP tokenizer (run with `-m torch` in a venv
with torch and transformers).

`CLIPTextModel(CLIPTextConfig(small sizes))` with random weights (LayerNorm affine parameters
perturbed) is exported with `state_dict()`, imported with `import_text_encoder`; last_hidden_state
and pooler_output must match to rtol = atol = 1e-4 in float32, for CLIP's legacy argmax pooling
(eos_token_id=2 in the config) and for pooling at a given eos id, with and without a padding
attention mask, and for both activations. transformers' CLIPTokenizer, built offline from the tiny
vocab.json / merges.txt of tests/test_text_encoder.py, must give the same ids as ours on a set of
sentences, with an added token too; the pre-tokenisation classes (built from `unicodedata`) are
compared with the `regex` module's \\p{L} / \\p{N} where that module is installed.
"""

import unicodedata

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402

from jaxgen.io.text_encoder_import import import_text_encoder  # noqa: E402
from jaxgen.nets.text_encoder import TextEncoder, TextEncoderConfig  # noqa: E402
from jaxgen.text import CLIPTokenizer  # noqa: E402
from jaxgen.text.tokenizers import clip_pretokenize  # noqa: E402
from test_text_encoder import write_clip_files  # noqa: E402

pytestmark = pytest.mark.torch
TOL = dict(rtol=1e-4, atol=1e-4)
SENTENCES = [
    "Hello world!", "hello, world. HELLO's world", "a photo of a cafe", "café's 42 hello",
    "ü and ñ are unknown", "  spaced\tout\n\nhello  ", "it's we're they've i'm we'll he'd",
    "<|endoftext|> hello <|startoftext|>", "x² ½ hello123world", "", "!!!...,,,'''",
]


def _torch_model(activation: str, eos_token_id: int, seed: int):
  torch.manual_seed(seed)
  cfg = transformers.CLIPTextConfig(
      vocab_size=99, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
      num_attention_heads=4, max_position_embeddings=12, hidden_act=activation,
      layer_norm_eps=1e-5, eos_token_id=eos_token_id, bos_token_id=0, pad_token_id=1,
      attn_implementation="eager")
  model = transformers.CLIPTextModel(cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  ours = TextEncoderConfig(vocab_size=99, max_length=12, width=32, layers=2, heads=4,
                           intermediate_size=40, activation=activation, layer_norm_eps=1e-5)
  sd = {k: v.numpy() for k, v in model.state_dict().items()}
  return model, ours, sd


@pytest.mark.parametrize("activation,eos_token_id", [("quick_gelu", 2), ("gelu", 97)])
def test_text_encoder_matches_transformers(activation, eos_token_id):
  model, cfg, sd = _torch_model(activation, eos_token_id, seed=3)
  variables = import_text_encoder(sd, cfg, source="CLIPTextModel")
  rng = np.random.default_rng(0)
  ids = rng.integers(3, 90, (3, 12))
  if eos_token_id == 2:  # legacy config: the eos is the largest id in each row
    ids[:, 7:] = 98
    ids[1, 4:] = 98
    ours_eos = None
  else:  # the eos 97 is not the largest id: pooling must find it, not the argmax
    ids[:, 7:] = eos_token_id
    ids[1, 4:] = eos_token_id
    ids[0, 2] = 98
    ours_eos = eos_token_id
  mask = (np.arange(12)[None] <= np.array([[7], [4], [11]])).astype(np.int64)
  for attention_mask in (None, mask):
    with torch.no_grad():
      ref = model(input_ids=torch.from_numpy(ids),
                  attention_mask=None if attention_mask is None else torch.from_numpy(
                      attention_mask))
    hidden, pooled = TextEncoder(cfg).apply(
        variables, jnp.asarray(ids), None if attention_mask is None else jnp.asarray(
            attention_mask), return_pooled=True, eos_token_id=ours_eos)
    np.testing.assert_allclose(hidden, ref.last_hidden_state.numpy(), **TOL)
    np.testing.assert_allclose(pooled, ref.pooler_output.numpy(), **TOL)


def test_sd_checkpoint_prefix_matches_transformers():
  model, cfg, sd = _torch_model("quick_gelu", 2, seed=4)
  # transformers 5 drops the `text_model.` level that SD checkpoints (saved with 4.x) have.
  full = {"cond_stage_model.transformer.text_model." + k.removeprefix("text_model."): v
          for k, v in sd.items()}
  full["first_stage_model.decoder.conv_in.weight"] = np.zeros((4, 4, 3, 3), np.float32)
  variables = import_text_encoder(full, cfg)
  ids = np.array([[0, 5, 6, 7, 98, 98, 98, 98, 98, 98, 98, 98]])
  with torch.no_grad():
    ref = model(input_ids=torch.from_numpy(ids)).last_hidden_state.numpy()
  np.testing.assert_allclose(TextEncoder(cfg).apply(variables, jnp.asarray(ids)), ref, **TOL)


def _hf_tokenizer(directory):
  try:
    return transformers.CLIPTokenizer.from_pretrained(str(directory), local_files_only=True)
  except Exception as err:  # noqa: BLE001 - any failure means "cannot build it offline"
    pytest.skip(f"transformers' CLIPTokenizer cannot be built offline from vocab.json/merges.txt: "
                f"{type(err).__name__}: {err}")


def test_clip_tokenizer_matches_transformers(tmp_path):
  write_clip_files(tmp_path)
  hf = _hf_tokenizer(tmp_path / "tokenizer")
  ours = CLIPTokenizer.from_pretrained(str(tmp_path))
  for text in SENTENCES:
    want = hf(text, padding="max_length", max_length=16, truncation=True)["input_ids"]
    assert ours.encode(text, max_length=16)[0].tolist() == want, text
  hf.add_tokens(["<v1>", "<v2>"])
  assert ours.add_tokens(["<v1>", "<v2>"]) == hf.convert_tokens_to_ids(["<v1>", "<v2>"])
  for text in ["a <v1> cafe", "<v2>hello<v1>", "hello <v2>, world"]:
    want = hf(text, padding="max_length", max_length=16, truncation=True)["input_ids"]
    assert ours.encode(text, max_length=16)[0].tolist() == want, text


def test_pretokenize_classes_match_regex_module():
  regex = pytest.importorskip("regex")
  pattern = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"""
                          r"""[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""")
  # Every code point that Python's unicodedata knows (the regex module's newer Unicode version
  # also classifies later additions), between a letter and a digit; then whole sentences.
  def reference(text):
    return pattern.findall(regex.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).lower())

  mismatches = []
  for cp in range(0x40000):
    c = chr(cp)
    if unicodedata.category(c) in ("Cn", "Cs"):
      continue
    if clip_pretokenize(f"x{c}1") != reference(f"x{c}1"):
      mismatches.append(hex(cp))
  assert not mismatches, mismatches[:10]
  for text in SENTENCES + ["Ⅻ ٣ 三 ① ¾ ǅ ʰ ℃ Ωmega مرحبا 你好 नमस्ते Ἀθῆναι\u3000x\x1cy\u2028z"]:
    assert clip_pretokenize(text) == reference(text), text
