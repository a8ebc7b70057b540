"""The CLIP-style text encoder, its transformers-layout importer and the tokenizers (default group).

References: a NumPy transcription of CLIP's text transformer (pre-LN, causal softmax attention
scaled by d_head^-1/2, quick_gelu MLP, final LayerNorm) to atol 1e-5; the transformers key list
enumerated here from CLIPTextModel's structure (names, torch shapes); the SD 1.5 parameter count
123,060,480 of openai/clip-vit-large-patch14's text model; BPE ids worked out by hand from the
merges written below. PyTorch / transformers parity is in tests/test_parity_text_encoder.py.
"""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.errors import ConfigError, DataError
from jaxgen.io.text_encoder_import import export_text_encoder, import_text_encoder
from jaxgen.nets.text_encoder import (TextEncoder, TextEncoderConfig, add_token_rows,
                                      eos_positions)
from jaxgen.text import CLIPTokenizer, WordTokenizer
from jaxgen.text.tokenizers import bytes_to_unicode, clip_pretokenize

ATOL = 1e-5
CFG = TextEncoderConfig.tiny()
BIG = dataclasses.replace(CFG, vocab_size=CFG.vocab_size + 3)  # after add_token_rows(.., 3, ..)


@functools.cache
def encoder(cfg: TextEncoderConfig, eos_token_id: int | None = None):
  """Jitted (hidden, pooled) = TextEncoder(cfg)(ids): one compile per config and input shape."""
  return jax.jit(functools.partial(TextEncoder(cfg).apply, return_pooled=True,
                                   eos_token_id=eos_token_id))


def hf_shapes(cfg: TextEncoderConfig) -> dict[str, tuple[int, ...]]:
  """{key: torch shape} of transformers' CLIPTextModel, walking its modules."""
  d, m = cfg.width, cfg.mlp_width
  out = {"text_model.embeddings.token_embedding.weight": (cfg.vocab_size, d),
         "text_model.embeddings.position_embedding.weight": (cfg.max_length, d)}
  for i in range(cfg.layers):
    p = f"text_model.encoder.layers.{i}."
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
      out[p + f"self_attn.{proj}.weight"], out[p + f"self_attn.{proj}.bias"] = (d, d), (d,)
    for ln in ("layer_norm1", "layer_norm2"):
      out[p + f"{ln}.weight"], out[p + f"{ln}.bias"] = (d,), (d,)
    out[p + "mlp.fc1.weight"], out[p + "mlp.fc1.bias"] = (m, d), (m,)
    out[p + "mlp.fc2.weight"], out[p + "mlp.fc2.bias"] = (d, m), (d,)
  out["text_model.final_layer_norm.weight"] = out["text_model.final_layer_norm.bias"] = (d,)
  return out


def random_state_dict(cfg: TextEncoderConfig, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  sd = {k: rng.normal(0, 0.2, s).astype(np.float32) for k, s in hf_shapes(cfg).items()}
  for k in sd:
    if "layer_norm" in k and k.endswith("weight"):
      sd[k] = 1 + sd[k]
  sd["text_model.embeddings.position_ids"] = np.arange(cfg.max_length)[None]
  return sd


def numpy_clip_text(sd: dict[str, np.ndarray], cfg: TextEncoderConfig, ids: np.ndarray):
  """Independent float64 forward of CLIP's text transformer on a transformers state dict."""
  g = lambda k: sd["text_model." + k].astype(np.float64)  # noqa: E731

  def ln(x, name):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + cfg.layer_norm_eps) * g(name + ".weight") + g(name + ".bias")

  def lin(x, name):
    return x @ g(name + ".weight").T + g(name + ".bias")

  b, length = ids.shape
  hd = cfg.width // cfg.heads
  x = g("embeddings.token_embedding.weight")[ids] + g("embeddings.position_embedding.weight")[
      :length]
  future = np.triu(np.ones((length, length), bool), 1)
  for i in range(cfg.layers):
    p = f"encoder.layers.{i}."
    h = ln(x, p + "layer_norm1")
    q, k, v = (lin(h, p + f"self_attn.{n}").reshape(b, length, cfg.heads, hd).transpose(0, 2, 1, 3)
               for n in ("q_proj", "k_proj", "v_proj"))
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
    s[..., future] = -np.inf
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    x = x + lin((a @ v).transpose(0, 2, 1, 3).reshape(b, length, -1), p + "self_attn.out_proj")
    h = lin(ln(x, p + "layer_norm2"), p + "mlp.fc1")
    x = x + lin(h / (1 + np.exp(-1.702 * h)), p + "mlp.fc2")
  return ln(x, "final_layer_norm")


@pytest.fixture(scope="module")
def tiny():
  sd = random_state_dict(CFG)
  return sd, import_text_encoder(sd, CFG)


def test_sd15_parameter_count():
  cfg = TextEncoderConfig.sd15()
  shapes = jax.eval_shape(TextEncoder(cfg).init, jax.random.key(0), jnp.zeros((1, 77), jnp.int32))
  assert sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes)) == 123_060_480
  assert sum(int(np.prod(s)) for s in hf_shapes(cfg).values()) == 123_060_480


def test_config_validation():
  with pytest.raises(ConfigError, match="heads"):
    TextEncoderConfig(width=32, heads=5)
  with pytest.raises(ConfigError, match="activation"):
    TextEncoderConfig(activation="relu")
  with pytest.raises(ConfigError, match="layers"):
    TextEncoderConfig(layers=0)


def test_forward_matches_numpy_and_shapes(tiny):
  sd, variables = tiny
  ids = np.random.default_rng(1).integers(0, CFG.vocab_size - 1, (2, CFG.max_length))
  ids[:, 9] = CFG.vocab_size - 1  # the "eos": largest id
  hidden, pooled = encoder(CFG)(variables, jnp.asarray(ids))
  assert hidden.shape == (2, CFG.max_length, CFG.width) and pooled.shape == (2, CFG.width)
  np.testing.assert_allclose(hidden, numpy_clip_text(sd, CFG, ids), atol=ATOL)
  np.testing.assert_array_equal(pooled, hidden[:, 9])
  short = jax.eval_shape(TextEncoder(CFG).apply, variables, jnp.zeros((1, 3), jnp.int32))
  assert short.shape == (1, 3, CFG.width)  # shorter than max_length (values: test_causality)
  with pytest.raises(ConfigError, match="input_ids"):
    TextEncoder(CFG).apply(variables, jnp.zeros((1, CFG.max_length + 1), jnp.int32))


def test_causality(tiny):
  _, variables = tiny
  ids = np.random.default_rng(2).integers(0, CFG.vocab_size, (1, CFG.max_length))
  changed = ids.copy()
  changed[0, 7] = (ids[0, 7] + 1) % CFG.vocab_size
  out, _ = encoder(CFG)(variables, jnp.asarray(np.concatenate([ids, changed])))
  np.testing.assert_array_equal(out[0, :7], out[1, :7])
  assert np.abs(out[0, 7:] - out[1, 7:]).min(axis=-1).max() > 1e-3  # later positions do change


def test_add_token_rows_and_pooling_with_added_tokens(tiny):
  _, variables = tiny
  old = variables["params"]["embeddings"]["token_embedding"]["embedding"]
  grown = add_token_rows(variables, 3, [4, 9, 4])
  table = grown["params"]["embeddings"]["token_embedding"]["embedding"]
  assert table.shape == (CFG.vocab_size + 3, CFG.width)
  np.testing.assert_array_equal(table[:CFG.vocab_size], old)
  np.testing.assert_array_equal(table[CFG.vocab_size:], old[np.array([4, 9, 4])])
  assert grown["params"]["encoder"] is variables["params"]["encoder"]
  bare = add_token_rows(variables["params"], 1, 0)  # the unwrapped params tree works too
  assert bare["embeddings"]["token_embedding"]["embedding"].shape[0] == CFG.vocab_size + 1
  with pytest.raises(ConfigError, match="init_ids"):
    add_token_rows(variables, 2, [1])
  with pytest.raises(ConfigError, match="init_ids"):
    add_token_rows(variables, 1, [CFG.vocab_size])
  # The new id 513 (a copy of 9's row) above the "eos" 100: CLIP's argmax pooling would pick it.
  eos = 100
  ids = np.full((2, CFG.max_length), eos)
  ids[:, :5] = [1, 5, CFG.vocab_size + 1, 7, eos]
  ids[1, 2] = 9
  hidden, pooled = encoder(BIG, eos)(grown, jnp.asarray(ids))
  np.testing.assert_array_equal(pooled, hidden[:, 4])  # the first eos
  np.testing.assert_array_equal(eos_positions(jnp.asarray(ids)), [2, 4])  # argmax: wrong for row 0
  ids[0, 2] = 9
  ref, _ = encoder(CFG)(variables, jnp.asarray(ids))  # the old model: old rows unchanged and
  np.testing.assert_allclose(hidden, ref, atol=1e-6)  # the new row 513 acts as token 9


def test_import_layout_and_round_trip(tiny):
  sd, variables = tiny
  p = variables["params"]
  np.testing.assert_array_equal(p["encoder"]["layers_1"]["self_attn"]["q_proj"]["kernel"],
                                sd["text_model.encoder.layers.1.self_attn.q_proj.weight"].T)
  np.testing.assert_array_equal(p["encoder"]["layers_0"]["layer_norm2"]["scale"],
                                sd["text_model.encoder.layers.0.layer_norm2.weight"])
  np.testing.assert_array_equal(p["embeddings"]["position_embedding"]["embedding"],
                                sd["text_model.embeddings.position_embedding.weight"])
  exported = export_text_encoder(variables)
  assert set(exported) == set(hf_shapes(CFG))
  for k, v in exported.items():
    np.testing.assert_array_equal(v, sd[k])
  # The single-file SD checkpoint layout, with other models' keys around it.
  full = {"cond_stage_model.transformer." + k: v for k, v in sd.items()}
  full["model.diffusion_model.input_blocks.0.0.weight"] = np.zeros(3, np.float32)
  full["cond_stage_model.transformer.text_model.embeddings.position_ids"] = np.arange(16)[None]
  again = import_text_encoder(full, CFG)
  jax.tree_util.tree_map(np.testing.assert_array_equal, again, variables)
  # transformers 5's CLIPTextModel.state_dict(): no `text_model.` level.
  bare = {k.removeprefix("text_model."): v for k, v in sd.items()}
  bare["text_projection.weight"] = np.zeros((4, CFG.width), np.float32)
  again = import_text_encoder(bare, CFG)
  jax.tree_util.tree_map(np.testing.assert_array_equal, again, variables)


def test_import_errors(tiny):
  sd, _ = tiny
  missing = {k: v for k, v in sd.items() if "layers.1.mlp.fc2.bias" not in k}
  with pytest.raises(DataError,
                     match=r"te.bin: missing keys text_model\.encoder\.layers\.1\.mlp\.fc2\.bias"):
    import_text_encoder(missing, CFG, source="te.bin")
  bad = dict(sd)
  bad["text_model.encoder.layers.0.mlp.fc1.weight"] = np.zeros((CFG.width, CFG.mlp_width))
  with pytest.raises(DataError, match=r"layers\.0\.mlp\.fc1\.weight has shape \(32, 64\), "
                     r"expected \(64, 32\)"):
    import_text_encoder(bad, CFG)
  extra = dict(sd)
  extra["text_model.encoder.layers.2.layer_norm1.weight"] = np.ones(CFG.width, np.float32)
  with pytest.raises(DataError, match=r"unexpected keys text_model\.encoder\.layers\.2"):
    import_text_encoder(extra, CFG)


def test_word_tokenizer(tmp_path):
  tok = WordTokenizer(["Black-footed Albatross", "a photo of a bird."])
  assert tok.tokens[:4] == ["<pad>", "<start>", "<end>", "<unk>"]
  words = ["-", ".", "a", "albatross", "bird", "black", "footed", "of", "photo"]
  assert tok.tokens[4:] == words
  ids = tok.encode(["A photo of a Black-footed albatross!", "bird"], max_length=8)
  assert ids.dtype == np.int32 and ids.shape == (2, 8)
  w = {t: i for i, t in enumerate(tok.tokens)}
  assert ids[0].tolist() == [1, w["a"], w["photo"], w["of"], w["a"], w["black"], w["-"], 2]
  assert ids[1].tolist() == [1, w["bird"], 2, 0, 0, 0, 0, 0]
  assert tok.decode(ids[1]) == "bird"
  assert tok.decode(tok.encode("a dog", 6)) == ["a <unk>"]
  new = tok.add_tokens(["<v1>", "<v2>"])
  assert new == [13, 14] and tok.vocab_size == 15
  got = tok.encode("a photo of a <V2> bird,<v1>", 12)[0].tolist()
  assert got == [1, w["a"], w["photo"], w["of"], w["a"], 14, w["bird"], 3, 13, 2, 0, 0]
  with pytest.raises(ConfigError, match="add_tokens"):
    tok.add_tokens(["bird"])
  path = str(tmp_path / "vocab.json")
  tok.save(path)
  loaded = WordTokenizer.load(path)
  assert loaded.tokens == tok.tokens
  np.testing.assert_array_equal(loaded.encode("a <v1> bird", 6), tok.encode("a <v1> bird", 6))
  with pytest.raises(DataError, match="nope.json"):
    WordTokenizer.load(str(tmp_path / "nope.json"))
  (tmp_path / "bad.json").write_text(json.dumps({"tokens": ["a"]}))
  with pytest.raises(DataError, match="bad.json"):
    WordTokenizer.load(str(tmp_path / "bad.json"))


# A tiny CLIP-style vocabulary: single byte-characters with and without '</w>', merge results,
# then the special tokens last (as in CLIP). Merge ranks are the line order.
CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789!,.'") + ["Ã", "©", "Ġ"]
MERGES = ["h e", "l l", "he ll", "hell o</w>", "o r", "w or", "wor l", "worl d</w>", "' s</w>",
          "e l", "c a", "ca f", "caf Ã", "cafÃ ©</w>"]


def write_clip_files(directory, pad_token=None):
  vocab = CHARS + [c + "</w>" for c in CHARS] + ["".join(m.split()) for m in MERGES]
  vocab += ["<|startoftext|>", "<|endoftext|>"]
  tokdir = directory / "tokenizer"
  tokdir.mkdir(parents=True, exist_ok=True)
  (tokdir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
  (tokdir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
  if pad_token is not None:
    (tokdir / "tokenizer_config.json").write_text(json.dumps({"pad_token": pad_token}))
  return {t: i for i, t in enumerate(vocab)}


def test_bytes_to_unicode():
  table = bytes_to_unicode()
  assert len(set(table.values())) == 256
  assert table[ord("a")] == "a" and table[0xC3] == "Ã" and table[0xA9] == "©"
  assert table[ord(" ")] == "Ġ" and table[0] == chr(256) and table[0xAD] == chr(256 + 67)


def test_clip_pretokenize():
  assert clip_pretokenize("A  Café's x² 42,\tnaïve!! <|endoftext|>") == [
      "a", "café", "'s", "x", "²", "4", "2", ",", "naïve", "!!", "<|endoftext|>"]


def test_clip_bpe_tokenizer(tmp_path):
  v = write_clip_files(tmp_path)
  tok = CLIPTokenizer.from_pretrained(str(tmp_path))
  bos, eos = v["<|startoftext|>"], v["<|endoftext|>"]
  assert tok.bos_id == bos and tok.eos_id == eos and tok.pad_id == eos and tok.max_length == 77
  # hello: h e l l o</w> -> he l l o</w> ('h e' ranks before 'e l') -> he ll o</w> -> hell o</w>
  # -> hello</w>
  assert tok.tokenize("Hello world!") == [v["hello</w>"], v["world</w>"], v["!</w>"]]
  assert tok.bpe("hell") == ["he", "l", "l</w>"]  # 'l l' does not merge 'l l</w>'
  assert tok.bpe("ell") == ["el", "l</w>"]
  # café = 63 61 66 c3 a9 -> c a f Ã ©</w> -> cafÃ©</w>; "'s" is its own pre-token.
  assert tok.tokenize("CAFÉ's 42") == [v["cafÃ©</w>"], v["'s</w>"], v["4</w>"], v["2</w>"]]
  assert tok.tokenize("ü") == [v["Ã"], eos]  # c3 bc: '¼</w>' is not in the vocabulary -> unk
  ids = tok.encode(["hello world", "hello hello hello hello"], max_length=5)
  assert ids.dtype == np.int32
  assert ids.tolist() == [[bos, v["hello</w>"], v["world</w>"], eos, eos],
                          [bos, v["hello</w>"], v["hello</w>"], v["hello</w>"], eos]]
  assert tok.encode("hello").shape == (1, 77)
  assert tok.decode(ids[0]) == "hello world"
  assert tok.decode(tok.encode("café")[0]) == "café"
  new = tok.add_tokens(["<v1>"])
  assert new == [len(v)] and tok.vocab_size == len(v) + 1
  assert tok.tokenize("a <V1> cafe") == [v["a</w>"], len(v), v["caf"], v["e</w>"]]
  assert tok.decode(tok.encode("hello <v1>")[0]) == "hello <v1>"
  with pytest.raises(ConfigError, match="add_tokens"):
    tok.add_tokens(["hello</w>"])


def test_clip_tokenizer_config_and_errors(tmp_path):
  v = write_clip_files(tmp_path, pad_token={"content": "!", "special": True})
  tok = CLIPTokenizer.from_pretrained(str(tmp_path))
  assert tok.encode("hello", max_length=5).tolist() == [
      [v["<|startoftext|>"], v["hello</w>"], v["<|endoftext|>"], v["!"], v["!"]]]
  (tmp_path / "tokenizer" / "added_tokens.json").write_text(json.dumps({"<v1>": len(v)}))
  tok = CLIPTokenizer.from_pretrained(str(tmp_path))  # a tokenizer saved after textual inversion
  assert tok.vocab_size == len(v) + 1 and tok.tokenize("hello <v1>") == [v["hello</w>"], len(v)]
  (tmp_path / "tokenizer" / "added_tokens.json").write_text(json.dumps({"<v1>": len(v) + 1}))
  with pytest.raises(DataError, match="added token ids"):
    CLIPTokenizer.from_pretrained(str(tmp_path))
  (tmp_path / "tokenizer" / "merges.txt").unlink()
  with pytest.raises(DataError, match="merges.txt"):
    CLIPTokenizer.from_pretrained(str(tmp_path))
  with pytest.raises(DataError, match="vocab.json"):
    CLIPTokenizer.from_pretrained(str(tmp_path / "nowhere"))
