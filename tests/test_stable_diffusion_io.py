"""Loading Stable Diffusion checkpoints (`jaxgen.io.stable_diffusion`) without torch.

A tiny backbone with random parameters is written out the way diffusers' `save_pretrained` and
the CompVis single-file checkpoints store it: PyTorch names and layouts (conv OIHW, Linear
[out, in], the VAE's attention projections as Linear in diffusers and 1x1 convs in CompVis),
config.json files in diffusers' / transformers' key names, written here from the config by this
test's own key table. Loading must give back the same `BackboneConfig` and bit-identical
parameters. The exporters below use the importers' public name maps; that those names are the
real diffusers / transformers ones is pinned by a few hand-written names and shapes here and,
against the torch modules themselves, by tests/test_parity_stable_diffusion_io.py.
"""

import dataclasses
import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxgen.errors import ConfigError, DataError
from jaxgen.io.cond_unet_import import config_from_diffusers, export_cond_unet
from jaxgen.io.kl_autoencoder_import import export_kl_autoencoder
from jaxgen.io.safetensors import load_safetensors, save_safetensors
from jaxgen.io.stable_diffusion import (load_stable_diffusion, sde_from_scheduler_config,
                                        text_config_from_transformers, vae_config_from_diffusers)
from jaxgen.io.text_encoder_import import export_text_encoder
from jaxgen.nets.cond_unet import CondUNetConfig, param_shapes
from jaxgen.nets.kl_autoencoder import KLAutoencoder, KLAutoencoderConfig
from jaxgen.nets.text_encoder import TextEncoder, TextEncoderConfig
from jaxgen.sde.sdes import DiscreteVPSDE
from jaxgen.t2i.backbone import BackboneConfig
from jaxgen.text.tokenizers import bytes_to_unicode

# --- a tiny CLIP BPE vocabulary: every byte, every byte at a word end, a few merges ------------
_CHARS = list(bytes_to_unicode().values())
MERGES = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o</w>")]
VOCAB = {t: i for i, t in enumerate(
    _CHARS + [c + "</w>" for c in _CHARS] + ["he", "ll", "hell", "hello</w>", "<|startoftext|>",
                                              "<|endoftext|>"])}
MAX_LENGTH = 16

CONFIG = BackboneConfig(
    unet=CondUNetConfig.tiny(),
    vae=dataclasses.replace(KLAutoencoderConfig.tiny(), scaling_factor=0.5),
    text=dataclasses.replace(TextEncoderConfig.tiny(), vocab_size=len(VOCAB),
                             max_length=MAX_LENGTH),
    sde=DiscreteVPSDE(beta_start=0.001, beta_end=0.02, num_train_timesteps=500, schedule="linear"),
    prediction_type="v_prediction")

# --- diffusers / transformers config.json files of a config (this test's own key table) --------


def unet_json(c: CondUNetConfig) -> dict:
  return {"_class_name": "UNet2DConditionModel", "act_fn": "silu",
          "attention_head_dim": c.num_attention_heads,
          "block_out_channels": list(c.block_out_channels),
          "center_input_sample": False, "cross_attention_dim": c.cross_attention_dim,
          "down_block_types": list(c.down_block_types), "downsample_padding": 1,
          "flip_sin_to_cos": c.flip_sin_to_cos, "freq_shift": 0, "in_channels": c.in_channels,
          "layers_per_block": c.layers_per_block, "mid_block_scale_factor": 1,
          "norm_eps": c.norm_eps, "norm_num_groups": c.norm_num_groups,
          "out_channels": c.out_channels, "sample_size": c.sample_size,
          "up_block_types": list(c.up_block_types), "use_linear_projection": False}


def vae_json(c: KLAutoencoderConfig) -> dict:
  attn = [c.resolution // 2 ** level in c.attn_resolutions for level in range(len(c.ch_mult))]
  return {"_class_name": "AutoencoderKL", "act_fn": "silu",
          "block_out_channels": [c.ch * m for m in c.ch_mult],
          "down_block_types": ["AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D"
                               for a in attn],
          "up_block_types": ["AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D"
                             for a in reversed(attn)],
          "in_channels": c.in_channels, "out_channels": c.out_channels,
          "latent_channels": c.z_channels, "layers_per_block": c.num_res_blocks,
          "norm_num_groups": c.num_groups, "sample_size": c.resolution,
          "scaling_factor": c.scaling_factor, "force_upcast": True, "shift_factor": None,
          "latents_mean": None, "latents_std": None}


def text_json(c: TextEncoderConfig) -> dict:
  return {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
          "attention_dropout": 0.0, "bos_token_id": 0, "eos_token_id": 2,
          "hidden_act": c.activation, "hidden_size": c.width, "intermediate_size": c.mlp_width,
          "layer_norm_eps": c.layer_norm_eps, "max_position_embeddings": c.max_length,
          "num_attention_heads": c.heads, "num_hidden_layers": c.layers, "projection_dim": 8,
          "vocab_size": c.vocab_size}


def scheduler_json(sde: DiscreteVPSDE, prediction_type: str) -> dict:
  return {"_class_name": "PNDMScheduler", "beta_start": sde.beta_start, "beta_end": sde.beta_end,
          "beta_schedule": sde.schedule, "num_train_timesteps": sde.num_train_timesteps,
          "prediction_type": prediction_type, "set_alpha_to_one": False, "skip_prk_steps": True,
          "steps_offset": 1, "clip_sample": False, "trained_betas": None,
          "timestep_spacing": "leading"}


# --- exporters: Flax variables -> PyTorch names and layouts (the library's inverses) -----------


def export_unet(variables: dict, c: CondUNetConfig, *, compvis: bool = False) -> dict:
  return export_cond_unet(variables, c, layout="compvis" if compvis else "diffusers")


def export_vae(variables: dict, c: KLAutoencoderConfig, *, compvis: bool = False) -> dict:
  return export_kl_autoencoder(variables, c, layout="compvis" if compvis else "diffusers")


def export_text(variables: dict, c: TextEncoderConfig, prefix: str = "text_model.") -> dict:
  out = export_text_encoder(variables, prefix=prefix)
  out[prefix + "embeddings.position_ids"] = np.arange(c.max_length, dtype=np.int64)[None]
  return out


# --- fixtures ------------------------------------------------------------------------------------


def random_params(config: BackboneConfig) -> dict:
  """`init_backbone`'s tree {'unet', 'vae', 'text'} (traced for shapes only: a real init compiles
  for half a minute on CPU) with every leaf drawn afresh, so no ones or zeros can hide a mix-up."""
  size, key = config.image_size, jax.random.key(0)
  shapes = {
      "unet": {"params": param_shapes(config.unet)},
      "vae": jax.eval_shape(KLAutoencoder(config.vae).init, key,
                            jnp.zeros((1, size, size, config.vae.in_channels))),
      "text": jax.eval_shape(TextEncoder(config.text).init, key,
                             jnp.zeros((1, config.text.max_length), jnp.int32))}
  leaves, tree = jax.tree_util.tree_flatten(shapes)
  rng = np.random.default_rng(0)
  return jax.tree_util.tree_unflatten(
      tree, [rng.standard_normal(s.shape).astype(np.float32) for s in leaves])


def write_json(path: str, value) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(value, f)


def write_tokenizer(folder: str, vocab: dict = VOCAB) -> None:
  write_json(os.path.join(folder, "vocab.json"), vocab)
  with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
    f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES))
  write_json(os.path.join(folder, "tokenizer_config.json"), {"model_max_length": MAX_LENGTH})


def write_pipeline(folder: str, config: BackboneConfig, params: dict) -> None:
  """A diffusers StableDiffusionPipeline folder as `save_pretrained` lays it out."""
  write_json(os.path.join(folder, "model_index.json"),
             {"_class_name": "StableDiffusionPipeline",
              "unet": ["diffusers", "UNet2DConditionModel"]})
  parts = {"unet": ("config.json", unet_json(config.unet), "diffusion_pytorch_model",
                    export_unet(params["unet"], config.unet)),
           "vae": ("config.json", vae_json(config.vae), "diffusion_pytorch_model",
                   export_vae(params["vae"], config.vae)),
           "text_encoder": ("config.json", text_json(config.text), "model",
                            export_text(params["text"], config.text)),
           "scheduler": ("scheduler_config.json",
                         scheduler_json(config.sde, config.prediction_type), None, None)}
  for sub, (name, cfg, stem, weights) in parts.items():
    write_json(os.path.join(folder, sub, name), cfg)
    if weights is not None:
      save_safetensors(os.path.join(folder, sub, f"{stem}.safetensors"), weights)
  write_tokenizer(os.path.join(folder, "tokenizer"))


@pytest.fixture(scope="module")
def params():
  return random_params(CONFIG)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, params):
  folder = str(tmp_path_factory.mktemp("sd") / "pipeline")
  write_pipeline(folder, CONFIG, params)
  return folder


def assert_same_params(got: dict, want: dict) -> None:
  assert set(got) == {"unet", "vae", "text"}
  for part in ("unet", "vae", "text"):
    g = traverse_util.flatten_dict(got[part])
    w = traverse_util.flatten_dict(want[part])
    assert set(g) == set(w), part
    for path, value in w.items():
      assert g[path].dtype == np.float32, (part, path)
      np.testing.assert_array_equal(np.asarray(g[path]), value, err_msg=f"{part} {path}")


# --- the exported names are the published ones ---------------------------------------------------


def test_exported_names_are_diffusers_and_transformers_names(params):
  unet = export_unet(params["unet"], CONFIG.unet)
  vae = export_vae(params["vae"], CONFIG.vae)
  text = export_text(params["text"], CONFIG.text)
  expected = [  # (state dict, name, PyTorch shape), written from diffusers' module structure
      (unet, "conv_in.weight", (32, 4, 3, 3)),
      (unet, "time_embedding.linear_1.weight", (128, 32)),
      (unet, "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight", (32, 32)),
      (unet, "down_blocks.0.downsamplers.0.conv.weight", (32, 32, 3, 3)),
      (unet, "mid_block.resnets.1.time_emb_proj.weight", (64, 128)),
      (unet, "up_blocks.0.upsamplers.0.conv.weight", (64, 64, 3, 3)),
      (unet, "conv_out.weight", (4, 32, 3, 3)),
      (vae, "encoder.down_blocks.3.attentions.0.to_q.weight", (32, 32)),
      (vae, "encoder.mid_block.attentions.0.to_out.0.weight", (32, 32)),
      (vae, "decoder.up_blocks.0.attentions.1.group_norm.weight", (32,)),
      (vae, "decoder.up_blocks.3.resnets.0.conv_shortcut.weight", (8, 16, 1, 1)),
      (vae, "quant_conv.weight", (8, 8, 1, 1)),
      (vae, "encoder.conv_out.weight", (8, 32, 3, 3)),
      (text, "text_model.embeddings.token_embedding.weight", (len(VOCAB), 32)),
      (text, "text_model.encoder.layers.1.self_attn.out_proj.weight", (32, 32)),
      (text, "text_model.encoder.layers.0.mlp.fc1.weight", (64, 32)),
      (text, "text_model.final_layer_norm.bias", (32,)),
  ]
  for sd, name, shape in expected:
    assert sd[name].shape == shape, name


# --- config readers ------------------------------------------------------------------------------

SD15_UNET = {"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0", "act_fn": "silu",
             "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
             "center_input_sample": False, "cross_attention_dim": 768,
             "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
             "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
             "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05,
             "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
             "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}
SD15_VAE = {"_class_name": "AutoencoderKL", "_diffusers_version": "0.6.0", "act_fn": "silu",
            "block_out_channels": [128, 256, 512, 512],
            "down_block_types": ["DownEncoderBlock2D"] * 4,
            "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
            "out_channels": 3, "sample_size": 512, "up_block_types": ["UpDecoderBlock2D"] * 4}
SD15_TEXT = {"architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0,
             "dropout": 0.0, "eos_token_id": 2, "hidden_act": "quick_gelu", "hidden_size": 768,
             "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 3072,
             "layer_norm_eps": 1e-05, "max_position_embeddings": 77,
             "model_type": "clip_text_model",
             "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 1,
             "projection_dim": 768, "torch_dtype": "float32", "vocab_size": 49408}
SD15_SCHEDULER = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                  "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
                  "steps_offset": 1, "trained_betas": None, "clip_sample": False}


def test_sd15_config_files_read_as_sd15():
  sde, prediction = sde_from_scheduler_config(SD15_SCHEDULER)
  config = BackboneConfig(unet=config_from_diffusers(SD15_UNET),
                          vae=vae_config_from_diffusers(SD15_VAE),
                          text=text_config_from_transformers(SD15_TEXT), sde=sde,
                          prediction_type=prediction)
  assert config == BackboneConfig.sd15()
  assert vae_config_from_diffusers(SD15_VAE).scaling_factor == 0.18215  # absent in 0.6.0 files


def test_tiny_config_files_read_back():
  assert vae_config_from_diffusers(vae_json(CONFIG.vae)) == CONFIG.vae
  assert text_config_from_transformers(text_json(CONFIG.text)) == CONFIG.text
  assert sde_from_scheduler_config(scheduler_json(CONFIG.sde, "v_prediction")) == (
      CONFIG.sde, "v_prediction")
  nested = {"model_type": "clip", "text_config": text_json(CONFIG.text), "projection_dim": 8}
  assert text_config_from_transformers(nested) == CONFIG.text
  # Attention at the two coarsest of four levels of a 64-pixel autoencoder: sizes 16 and 8.
  cfg = dict(SD15_VAE, sample_size=64,
             down_block_types=["DownEncoderBlock2D"] * 2 + ["AttnDownEncoderBlock2D"] * 2,
             up_block_types=["AttnUpDecoderBlock2D"] * 2 + ["UpDecoderBlock2D"] * 2)
  assert vae_config_from_diffusers(cfg).attn_resolutions == (16, 8)
  assert vae_config_from_diffusers(dict(SD15_VAE, sample_size=[512, 512])).resolution == 512
  sde, prediction = sde_from_scheduler_config({})  # diffusers' scheduler defaults
  assert sde == DiscreteVPSDE(beta_start=0.0001, beta_end=0.02, schedule="linear")
  assert prediction == "epsilon"


@pytest.mark.parametrize("key,value", [
    ("shift_factor", 0.1159), ("latents_mean", [0.0] * 4), ("act_fn", "gelu"),
    ("use_quant_conv", False), ("mid_block_add_attention", False),
    ("block_out_channels", [128, 192, 512, 512]),
    ("down_block_types", ["DownEncoderBlock2D"] * 3 + ["SimpleDown"]),
    ("down_block_types", ["DownEncoderBlock2D"] * 3),
    ("up_block_types", ["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * 3),
    ("sample_size", [512, 256]),
])
def test_vae_config_refusals_name_the_key(key, value):
  with pytest.raises(ConfigError) as err:
    vae_config_from_diffusers(dict(SD15_VAE, **{key: value}))
  assert err.value.key == f"kl_autoencoder.{key}"


@pytest.mark.parametrize("key,value", [
    ("trained_betas", [0.001] * 1000), ("rescale_betas_zero_snr", True),
    ("beta_schedule", "squaredcos_cap_v2"), ("prediction_type", "sample")])
def test_scheduler_refusals_name_the_key(key, value):
  with pytest.raises(ConfigError) as err:
    sde_from_scheduler_config(dict(SD15_SCHEDULER, **{key: value}))
  assert err.value.key == f"scheduler.{key}"


def test_text_config_refuses_unknown_activation():
  with pytest.raises(ConfigError, match="activation"):
    text_config_from_transformers(dict(SD15_TEXT, hidden_act="relu"))


# --- loading -------------------------------------------------------------------------------------


def test_diffusers_folder_round_trip(pipeline, params):
  config, got, tokenizer = load_stable_diffusion(pipeline)
  assert config == CONFIG
  assert_same_params(got, params)
  assert tokenizer.vocab_size == config.text.vocab_size == len(VOCAB)
  ids = tokenizer.encode(["hello a"])
  want = [VOCAB["<|startoftext|>"], VOCAB["hello</w>"], VOCAB["a</w>"]]
  want += [VOCAB["<|endoftext|>"]] * (MAX_LENGTH - 3)
  np.testing.assert_array_equal(ids, [want])


def test_single_file_compvis_round_trip(tmp_path, params):
  weights = {**export_unet(params["unet"], CONFIG.unet, compvis=True),
             **export_vae(params["vae"], CONFIG.vae, compvis=True),
             **export_text(params["text"], CONFIG.text,
                           prefix="cond_stage_model.transformer.text_model."),
             "betas": CONFIG.sde.betas().astype(np.float32),
             "model_ema.decay": np.array(0.9999, np.float32)}
  assert "model.diffusion_model.input_blocks.0.0.weight" in weights
  assert "first_stage_model.decoder.up.3.attn.0.q.weight" in weights
  path = str(tmp_path / "tiny.safetensors")
  save_safetensors(path, weights)
  tok = str(tmp_path / "tokenizer")
  write_tokenizer(tok)
  config, got, tokenizer = load_stable_diffusion(path, tokenizer_path=tok, config=CONFIG)
  assert config == CONFIG
  assert_same_params(got, params)
  assert tokenizer.vocab_size == len(VOCAB)
  _, _, none = load_stable_diffusion(path, config=CONFIG)
  assert none is None
  # A schedule that disagrees with the checkpoint's betas buffer (scaled_linear, not linear).
  other = dataclasses.replace(CONFIG, sde=DiscreteVPSDE(beta_start=0.001, beta_end=0.02,
                                                        num_train_timesteps=500))
  with pytest.raises(DataError, match="betas"):
    load_stable_diffusion(path, config=other)
  # Without a config the schedule is SD 1.x's, which the betas buffer contradicts ...
  with pytest.raises(DataError, match="betas"):
    load_stable_diffusion(path)
  # ... and so are the sizes (12 text layers, not 2), except the vocabulary size, which is read
  # from the token embedding.
  del weights["betas"]
  save_safetensors(path, weights)
  with pytest.raises(DataError) as err:
    load_stable_diffusion(path)
  assert "missing keys cond_stage_model.transformer.text_model.encoder.layers.10." in str(err.value)
  assert f"vocab_size={len(VOCAB)}," in str(err.value)


def _copy(pipeline: str, tmp_path) -> str:
  folder = str(tmp_path / "copy")
  shutil.copytree(pipeline, folder)
  return folder


def test_missing_paths_are_data_errors(pipeline, tmp_path):
  missing = str(tmp_path / "nowhere")
  with pytest.raises(DataError, match=re.escape(missing)):
    load_stable_diffusion(missing)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(DataError, match="model_index.json nor unet/"):
    load_stable_diffusion(str(empty))
  folder = _copy(pipeline, tmp_path)
  os.remove(os.path.join(folder, "unet", "config.json"))
  with pytest.raises(DataError, match=re.escape(os.path.join(folder, "unet", "config.json"))):
    load_stable_diffusion(folder)
  shutil.rmtree(os.path.join(folder, "scheduler"))
  with pytest.raises(DataError, match="no scheduler/ sub-folder"):
    load_stable_diffusion(folder)
  with pytest.raises(DataError, match="vocab.json"):
    load_stable_diffusion(pipeline, tokenizer_path=str(empty))
  with pytest.raises(ConfigError, match="load_stable_diffusion.config"):
    load_stable_diffusion(pipeline, config=CONFIG)


def test_dropped_weight_is_named(pipeline, tmp_path):
  folder = _copy(pipeline, tmp_path)
  dropped = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
  path = os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors")
  weights = dict(load_safetensors(path, mmap=False))
  del weights[dropped]
  save_safetensors(path, weights)
  with pytest.raises(DataError, match=re.escape(dropped)):
    load_stable_diffusion(folder)


def write_tokenizer_json(folder: str, added: tuple[str, ...] = ()) -> None:
  """tokenizer.json + tokenizer_config.json only, as transformers 5's save_pretrained writes."""
  specials = ["<|startoftext|>", "<|endoftext|>"]
  entries = [{"id": VOCAB[t], "content": t, "special": True} for t in specials]
  entries += [{"id": len(VOCAB) + i, "content": t, "special": False} for i, t in enumerate(added)]
  write_json(os.path.join(folder, "tokenizer.json"), {
      "version": "1.0", "added_tokens": entries,
      "model": {"type": "BPE", "vocab": VOCAB, "merges": [list(m) for m in MERGES]}})
  write_json(os.path.join(folder, "tokenizer_config.json"), {
      "backend": "tokenizers", "bos_token": specials[0], "eos_token": specials[1],
      "pad_token": specials[1], "unk_token": specials[1], "model_max_length": MAX_LENGTH,
      "tokenizer_class": "CLIPTokenizer"})


def test_tokenizer_json_only(pipeline, tmp_path):
  folder = _copy(pipeline, tmp_path)
  shutil.rmtree(os.path.join(folder, "tokenizer"))
  write_tokenizer_json(os.path.join(folder, "tokenizer"))
  _, _, from_json = load_stable_diffusion(folder)
  _, _, from_vocab = load_stable_diffusion(pipeline)
  texts = ["hello a", "Hello, hello world!", ""]
  np.testing.assert_array_equal(from_json.encode(texts), from_vocab.encode(texts))
  assert from_json.max_length == MAX_LENGTH and from_json.vocab_size == len(VOCAB)
  # An added (textual-inversion) token is read too: then the embedding is one row short.
  write_tokenizer_json(os.path.join(folder, "tokenizer"), added=("<v1>",))
  with pytest.raises(DataError, match=f"{len(VOCAB) + 1} tokens"):
    load_stable_diffusion(folder)


def test_tokenizer_larger_than_embedding_is_refused(pipeline, tmp_path):
  folder = _copy(pipeline, tmp_path)
  write_tokenizer(os.path.join(folder, "tokenizer"), dict(VOCAB, **{"<v1>": len(VOCAB)}))
  with pytest.raises(DataError, match=f"{len(VOCAB) + 1} tokens"):
    load_stable_diffusion(folder)
