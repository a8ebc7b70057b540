"""Text -> token ids for `jaxgen.nets.text_encoder`: a word-level tokenizer and CLIP's BPE.

`WordTokenizer` is a closed vocabulary of lower-cased words and punctuation marks, built from the
class names or captions of a data set, for tiny text encoders trained from scratch on CPU.
`CLIPTokenizer` reproduces OpenAI CLIP's byte-level BPE (Radford et al. 2021; Sennrich et al.
2016) from a model's `tokenizer/vocab.json` and `merges.txt`, so that pretrained SD 1.x text
encoders see the ids they were trained on.

Both hand out new ids with `add_tokens` for textual-inversion identifiers ("<v1>" in Diff-Mix's
"<v1> bird" class names): an added token is matched as a whole wherever it occurs in the
(lower-cased) text, before any other splitting.

CLIP's pre-tokenisation regex uses \\p{L} and \\p{N}, which Python's `re` lacks (the `regex`
module is not a dependency). The classes are built once from `unicodedata` (general categories
L* and N*) on first use (~0.2 s), which is exact for the Unicode version of the running
Python's `unicodedata` (`unicodedata.unidata_version`, 14.0 in Python 3.11; the torch-group test
checks every code point it assigns against the `regex` module); code points assigned only in
later versions differ. Whitespace is Unicode's White_Space set, as in the `regex` module. Text cleaning follows
transformers' CLIPTokenizer: NFC normalisation, runs of whitespace -> one space, lower case
(OpenAI's reference additionally runs ftfy and HTML unescaping, not done here).
"""

from __future__ import annotations

import functools
import os
import re
import unicodedata
from typing import Iterable, Mapping, Sequence

import numpy as np

from jaxgen.errors import ConfigError, DataError
from jaxgen.io.files import atomic_write_json, read_json
from jaxgen.io import paths

__all__ = ["CLIPTokenizer", "WordTokenizer", "bytes_to_unicode", "clip_pretokenize"]

_WORD_FORMAT = "jaxgen.WordTokenizer"
_WORD_SPLIT = re.compile(r"\w+|[^\w\s]")
_EOW = "</w>"


def _added_splitter(tokens: Iterable[str]) -> re.Pattern | None:
  """A pattern matching any of `tokens` (lower-cased), longest first, or None if there are none."""
  forms = sorted({t.lower() for t in tokens}, key=len, reverse=True)
  return re.compile("|".join(map(re.escape, forms))) if forms else None


def _split_added(text: str, splitter: re.Pattern | None) -> list[tuple[str, bool]]:
  """[(piece, is_added_token)] in order of `text`, empty pieces left out."""
  if splitter is None:
    return [(text, False)]
  out, start = [], 0
  for m in splitter.finditer(text):
    if m.start() > start:
      out.append((text[start:m.start()], False))
    out.append((m.group(), True))
    start = m.end()
  if start < len(text):
    out.append((text[start:], False))
  return out


def _check_max_length(max_length: int) -> None:
  if not isinstance(max_length, int) or max_length < 2:
    raise ConfigError("tokenizer.max_length", max_length, "an int >= 2 (start and end tokens)")


def _pack(rows: list[list[int]], max_length: int, start: int, end: int, pad: int) -> np.ndarray:
  """[start] + ids[:max_length - 2] + [end], padded with `pad` to [B, max_length] int32."""
  out = np.full((len(rows), max_length), pad, np.int32)
  for i, ids in enumerate(rows):
    seq = [start] + ids[:max_length - 2] + [end]
    out[i, :len(seq)] = seq
  return out


def _as_list(texts: str | Sequence[str]) -> list[str]:
  return [texts] if isinstance(texts, str) else list(texts)


class WordTokenizer:
  """Word-level vocabulary: ids 0-3 are <pad>, <start>, <end>, <unk>, then the sorted distinct
  words of the texts it was built from, then added tokens in the order they were added.

  Text is lower-cased and split into runs of word characters (`\\w+`) and single punctuation
  marks; unknown words become <unk>.
  """

  PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
  SPECIALS = (PAD, START, END, UNK)
  pad_id, start_id, end_id, unk_id = 0, 1, 2, 3

  def __init__(self, texts: Iterable[str] = (), *, _tokens: Sequence[str] | None = None,
               _added: Sequence[str] = ()):
    if _tokens is None:
      words = sorted({w for text in texts for w in _WORD_SPLIT.findall(text.lower())})
      _tokens = list(self.SPECIALS) + [w for w in words if w not in self.SPECIALS]
    self._tokens = list(_tokens)
    self._ids = {t: i for i, t in enumerate(self._tokens)}
    self._added = list(_added)
    self._splitter = _added_splitter(self._added)

  @property
  def vocab_size(self) -> int:
    return len(self._tokens)

  @property
  def tokens(self) -> list[str]:
    """All tokens in id order."""
    return list(self._tokens)

  def token_to_id(self, token: str) -> int:
    return self._ids.get(token, self.unk_id)

  def add_tokens(self, tokens: Sequence[str]) -> list[int]:
    """Appends new tokens (e.g. "<v1>") and returns their ids, vocab_size, vocab_size + 1, ...

    Raises:
      ConfigError: a token is already in the vocabulary (or given twice), or has whitespace.
    """
    ids = []
    for tok in tokens:
      if tok in self._ids or tok.lower() in self._ids or not tok or tok.split() != [tok]:
        raise ConfigError("tokenizer.add_tokens", tok, "a new token without whitespace")
      self._ids[tok] = len(self._tokens)
      self._tokens.append(tok)
      self._added.append(tok)
      ids.append(self._ids[tok])
    self._splitter = _added_splitter(self._added)
    return ids

  def tokenize(self, text: str) -> list[int]:
    """Ids of `text` without start/end tokens or padding."""
    added = {t.lower(): self._ids[t] for t in self._added}
    ids = []
    for piece, is_added in _split_added(text.lower(), self._splitter):
      if is_added:
        ids.append(added[piece])
      else:
        ids.extend(self._ids.get(w, self.unk_id) for w in _WORD_SPLIT.findall(piece))
    return ids

  def encode(self, texts: str | Sequence[str], max_length: int) -> np.ndarray:
    """int32 [B, max_length]: <start>, the ids (truncated to max_length - 2), <end>, <pad>s."""
    _check_max_length(max_length)
    rows = [self.tokenize(t) for t in _as_list(texts)]
    return _pack(rows, max_length, self.start_id, self.end_id, self.pad_id)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str | list[str]:
    """Space-joined tokens up to the first <end>, without <pad>/<start> (a 2-D input gives a
    list). Punctuation comes back space-separated: "a red-winged bird" -> "a red - winged bird"."""
    ids = np.asarray(ids)
    if ids.ndim == 2:
      return [self.decode(row) for row in ids]
    words = []
    for i in ids.tolist():
      if i == self.end_id:
        break
      if i in (self.pad_id, self.start_id):
        continue
      words.append(self._tokens[i] if 0 <= i < len(self._tokens) else self.UNK)
    return " ".join(words)

  def save(self, path: str) -> None:
    """Writes the vocabulary as JSON (atomically)."""
    atomic_write_json(path, {"format": _WORD_FORMAT, "tokens": self._tokens,
                             "added": self._added})

  @classmethod
  def load(cls, path: str) -> "WordTokenizer":
    """Reads what `save` wrote.

    Raises:
      DataError: the file is missing, not JSON, or not a WordTokenizer vocabulary.
    """
    if not paths.isfile(path):
      raise DataError(f"{path}: no such word-tokenizer file (write one with WordTokenizer.save)")
    try:
      data = read_json(path)
    except (OSError, ValueError) as err:
      raise DataError(f"{path}: unreadable word-tokenizer file ({err})") from None
    data = data if isinstance(data, dict) else {}
    tokens, added = data.get("tokens"), data.get("added", [])
    valid = (data.get("format") == _WORD_FORMAT and isinstance(tokens, list)
             and isinstance(added, list) and tuple(tokens[:4]) == cls.SPECIALS
             and len(set(tokens)) == len(tokens) and set(added) <= set(tokens))
    if not valid:
      raise DataError(f"{path}: not a {_WORD_FORMAT} file (expected 'tokens' starting with "
                      f"{list(cls.SPECIALS)}, distinct, and 'added' among them)")
    return cls(_tokens=tokens, _added=added)


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
  """GPT-2/CLIP byte -> printable character table: bytes that are printable Latin-1 characters
  ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves, the other 68 bytes (space, controls, ...)
  map in order to chr(256), chr(257), ... so BPE never sees whitespace or control characters."""
  keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
          *range(ord("®"), ord("ÿ") + 1)]
  table, extra = {}, 0
  for b in range(256):
    if b in keep:
      table[b] = chr(b)
    else:
      table[b] = chr(256 + extra)
      extra += 1
  return table


def _char_class(pred) -> str:
  ranges, start = [], None
  # Planes 4-16 hold no letters or numbers (unassigned, tags, private use), so stop at 0x40000.
  for cp in range(0x40001):
    ok = cp < 0x40000 and pred(unicodedata.category(chr(cp)))
    if ok and start is None:
      start = cp
    elif not ok and start is not None:
      ranges.append((start, cp - 1))
      start = None
  esc = lambda cp: re.escape(chr(cp))  # noqa: E731
  return "".join(esc(a) if a == b else f"{esc(a)}-{esc(b)}" for a, b in ranges)


# Unicode's White_Space property, what \s means to the regex module and to transformers'
# tokenizers; Python's \s also matches the separators U+001C..U+001F.
_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_SPACES = re.compile(f"[{_SPACE}]+")


@functools.cache
def _clip_pattern() -> re.Pattern:
  letters, numbers = _char_class(lambda c: c[0] == "L"), _char_class(lambda c: c[0] == "N")
  return re.compile(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"
                    f"[{letters}]+|[{numbers}]|[^{_SPACE}{letters}{numbers}]+")


def _clean(text: str) -> str:
  return _SPACES.sub(" ", unicodedata.normalize("NFC", text)).lower()


def clip_pretokenize(text: str) -> list[str]:
  """CLIP's pre-tokens of cleaned text: letter runs, single digits, runs of other non-space
  characters, and the contractions 's 't 're 've 'm 'll 'd."""
  return _clip_pattern().findall(_clean(text))


class CLIPTokenizer:
  """OpenAI CLIP's byte-level BPE tokenizer (as transformers' CLIPTokenizer).

  Each pre-token's UTF-8 bytes are mapped to characters by `bytes_to_unicode`, the last one
  gets the end-of-word marker '</w>', and the adjacent pair with the lowest merge rank (its line
  in merges.txt) is merged, every occurrence left to right, until no pair has a rank. Pieces
  missing from the vocabulary become the unk token. `encode` wraps the ids in <|startoftext|> ...
  <|endoftext|> and pads with the pad token (SD 1.x: <|endoftext|>; SD 2.x: "!").
  """

  def __init__(self, vocab: Mapping[str, int], merges: Sequence[tuple[str, str]], *,
               bos_token: str = "<|startoftext|>", eos_token: str = "<|endoftext|>",
               pad_token: str = "<|endoftext|>", unk_token: str = "<|endoftext|>",
               max_length: int = 77, source: str = "vocab"):
    _check_max_length(max_length)
    self._vocab = dict(vocab)
    for role, tok in (("bos", bos_token), ("eos", eos_token), ("pad", pad_token),
                      ("unk", unk_token)):
      if tok not in self._vocab:
        raise DataError(f"{source}: the {role} token {tok!r} is not in the vocabulary")
    self._ranks = {tuple(pair): rank for rank, pair in enumerate(merges)}
    self._inverse = {i: t for t, i in self._vocab.items()}
    self.bos_id, self.eos_id = self._vocab[bos_token], self._vocab[eos_token]
    self.pad_id, self.unk_id = self._vocab[pad_token], self._vocab[unk_token]
    self.max_length = max_length
    self._special = {bos_token, eos_token, pad_token, unk_token}
    self._added: list[str] = []
    self._byte_char = bytes_to_unicode()
    self._char_byte = {c: b for b, c in self._byte_char.items()}
    self._cache: dict[str, list[str]] = {}
    self._splitter = _added_splitter(self._special)

  @classmethod
  def from_files(cls, vocab_path: str, merges_path: str,
                 config_path: str | None = None) -> "CLIPTokenizer":
    """Reads vocab.json ({token: id}), merges.txt (a '#version' header, then one "a b" pair per
    line, highest priority first) and, if given and present, tokenizer_config.json (bos/eos/pad/
    unk tokens, model_max_length, added_tokens_decoder), plus added_tokens.json next to vocab.json
    if present: tokens added after the vocabulary (textual inversion) are added again.

    Raises:
      DataError: a file is missing or malformed (naming it).
    """
    for path in (vocab_path, merges_path):
      if not paths.isfile(path):
        raise DataError(f"{path}: no such tokenizer file (a model's tokenizer/ folder holds "
                        "vocab.json and merges.txt)")
    vocab = _read_json(vocab_path, dict)
    with paths.open(merges_path, encoding="utf-8") as f:
      lines = [ln.rstrip("\n") for ln in f]
    merges = []
    for n, line in enumerate(lines, 1):
      if not line.strip() or (n == 1 and line.startswith("#version")):
        continue
      pair = line.split()
      if len(pair) != 2:
        raise DataError(f"{merges_path}:{n}: expected two space-separated symbols, got {line!r}")
      merges.append((pair[0], pair[1]))
    kwargs, extra = _tokenizer_config(config_path)
    tok = cls(vocab, merges, source=vocab_path, **kwargs)
    added_path = os.path.join(os.path.dirname(vocab_path), "added_tokens.json")
    if paths.isfile(added_path):
      extra.update(_read_json(added_path, dict))
    tok._re_add(extra, f"{os.path.dirname(vocab_path) or '.'}: added token ids",
                "(added_tokens.json / tokenizer_config.json)")
    return tok

  @classmethod
  def from_tokenizer_json(cls, path: str, config_path: str | None = None) -> "CLIPTokenizer":
    """Reads the tokenizers library's `tokenizer.json` (all that transformers 5's
    `save_pretrained` writes): its BPE model's vocab and merges and its added tokens, with
    special tokens and length from tokenizer_config.json as in `from_files`.

    Raises:
      DataError: the file is missing, or holds no BPE model with vocab and merges.
    """
    if not paths.isfile(path):
      raise DataError(f"{path}: no such tokenizer file (a tokenizers BPE tokenizer.json)")
    data = _read_json(path, dict)
    model = data.get("model")
    if (not isinstance(model, dict) or model.get("type") != "BPE"
        or not isinstance(model.get("vocab"), dict) or not isinstance(model.get("merges"), list)):
      raise DataError(f"{path}: no BPE model with vocab and merges (expected CLIP's tokenizer.json)")
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    if any(len(m) != 2 for m in merges):
      raise DataError(f"{path}: a merge is not a pair of symbols")
    kwargs, extra = _tokenizer_config(config_path)
    tok = cls(model["vocab"], merges, source=path, **kwargs)
    extra.update({e["content"]: e.get("id") for e in data.get("added_tokens") or ()
                  if isinstance(e, dict) and isinstance(e.get("content"), str)})
    tok._re_add(extra, f"{path}: added token ids", "")
    return tok

  @classmethod
  def from_pretrained(cls, directory: str) -> "CLIPTokenizer":
    """`from_files` on `directory/tokenizer/` (a diffusers model folder) or `directory` itself,
    or `from_tokenizer_json` when that folder has a tokenizer.json but no vocab.json."""
    sub = os.path.join(directory, "tokenizer")
    base = sub if paths.isdir(sub) else directory
    config = os.path.join(base, "tokenizer_config.json")
    if (not paths.isfile(os.path.join(base, "vocab.json"))
        and paths.isfile(os.path.join(base, "tokenizer.json"))):
      return cls.from_tokenizer_json(os.path.join(base, "tokenizer.json"), config)
    return cls.from_files(os.path.join(base, "vocab.json"), os.path.join(base, "merges.txt"),
                          config)

  def _re_add(self, extra: Mapping[str, int], where: str, files: str) -> None:
    """Re-adds tokens saved past the vocabulary (textual inversion); their ids must continue it."""
    new = sorted((i, t) for t, i in extra.items() if t not in self._vocab)
    if [i for i, _ in new] != list(range(self.vocab_size, self.vocab_size + len(new))):
      raise DataError(f"{where} {[i for i, _ in new]} {files}".rstrip() + " do not continue the "
                      f"vocabulary of {self.vocab_size} tokens")
    self.add_tokens([t for _, t in new])

  @property
  def vocab_size(self) -> int:
    """Number of ids including added tokens (the text encoder's vocab_size must match)."""
    return len(self._vocab)

  def token_to_id(self, token: str) -> int:
    return self._vocab.get(token, self.unk_id)

  def add_tokens(self, tokens: Sequence[str]) -> list[int]:
    """Adds whole-match tokens (e.g. "<v1>") with ids vocab_size, vocab_size + 1, ...

    Raises:
      ConfigError: a token is already in the vocabulary (or given twice), or has whitespace.
    """
    ids = []
    for tok in tokens:
      if tok in self._vocab or not tok or tok.split() != [tok]:
        raise ConfigError("tokenizer.add_tokens", tok, "a new token without whitespace")
      self._vocab[tok] = len(self._vocab)
      self._inverse[self._vocab[tok]] = tok
      self._added.append(tok)
      ids.append(self._vocab[tok])
    self._splitter = _added_splitter([*self._special, *self._added])
    return ids

  def bpe(self, piece: str) -> list[str]:
    """BPE symbols of one byte-mapped pre-token, the last ending in '</w>'."""
    if piece in self._cache:
      return self._cache[piece]
    word = list(piece[:-1]) + [piece[-1] + _EOW]
    while len(word) > 1:
      rank, pair = min((self._ranks.get(p, float("inf")), p) for p in zip(word, word[1:]))
      if rank == float("inf"):
        break
      merged, i = [], 0
      while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
          merged.append(word[i] + word[i + 1])
          i += 2
        else:
          merged.append(word[i])
          i += 1
      word = merged
    self._cache[piece] = word
    return word

  def tokenize(self, text: str) -> list[int]:
    """Ids of `text` without <|startoftext|>/<|endoftext|> wrapping or padding."""
    lowered = {t.lower(): self._vocab[t] for t in [*self._special, *self._added]}
    ids = []
    for chunk, is_added in _split_added(_clean(text), self._splitter):
      if is_added:
        ids.append(lowered[chunk])
        continue
      for piece in _clip_pattern().findall(chunk):
        mapped = "".join(self._byte_char[b] for b in piece.encode("utf-8"))
        ids.extend(self._vocab.get(s, self.unk_id) for s in self.bpe(mapped))
    return ids

  def encode(self, texts: str | Sequence[str], max_length: int | None = None) -> np.ndarray:
    """int32 [B, max_length] (default self.max_length, 77): bos, ids truncated to
    max_length - 2, eos, then pad ids."""
    max_length = self.max_length if max_length is None else max_length
    _check_max_length(max_length)
    rows = [self.tokenize(t) for t in _as_list(texts)]
    return _pack(rows, max_length, self.bos_id, self.eos_id, self.pad_id)

  def decode(self, ids: Sequence[int] | np.ndarray,
             skip_special_tokens: bool = True) -> str | list[str]:
    """Text of `ids` ('</w>' becomes a space; a 2-D input gives a list). With
    skip_special_tokens, bos/eos/pad/unk ids are dropped."""
    ids = np.asarray(ids)
    if ids.ndim == 2:
      return [self.decode(row, skip_special_tokens) for row in ids]
    buf = bytearray()
    for i in ids.tolist():
      tok = self._inverse.get(i)
      if tok is None or (skip_special_tokens and tok in self._special):
        continue
      if tok in self._special or tok in self._added:
        buf += tok.encode("utf-8") + b" "
        continue
      eow = tok.endswith(_EOW)
      body = tok[:-len(_EOW)] if eow else tok
      buf += bytes(self._char_byte.get(c, ord("?")) for c in body) + (b" " if eow else b"")
    return buf.decode("utf-8", errors="replace").strip()


def _tokenizer_config(path: str | None) -> tuple[dict, dict[str, int]]:
  """(CLIPTokenizer keyword arguments, {added token: id}) from a tokenizer_config.json, if any."""
  kwargs: dict = {}
  extra: dict[str, int] = {}
  if path is None or not paths.isfile(path):
    return kwargs, extra
  config = _read_json(path, dict)
  for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
    value = config.get(key)
    value = value.get("content") if isinstance(value, dict) else value
    if isinstance(value, str):
      kwargs[key] = value
  length = config.get("model_max_length")
  if isinstance(length, int) and 2 <= length <= 4096:  # huge = "no limit" in transformers
    kwargs["max_length"] = length
  decoder = config.get("added_tokens_decoder")  # {"49408": {"content": "<v1>", ...}}
  for i, entry in (decoder.items() if isinstance(decoder, dict) else ()):
    if isinstance(entry, dict) and isinstance(entry.get("content"), str):
      extra[entry["content"]] = int(i)
  return kwargs, extra


def _read_json(path: str, kind: type):
  try:
    data = read_json(path)
  except (OSError, ValueError) as err:
    raise DataError(f"{path}: unreadable JSON ({err})") from None
  if not isinstance(data, kind):
    raise DataError(f"{path}: expected a JSON {kind.__name__}, got {type(data).__name__}")
  return data
