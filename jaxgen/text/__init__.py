"""jaxgen.text: tokenizers that turn prompts and class names into ids for
`jaxgen.nets.text_encoder` (a word-level one for tiny models, CLIP's byte-level BPE for SD 1.x)."""

from jaxgen.text.tokenizers import CLIPTokenizer, WordTokenizer

__all__ = ["CLIPTokenizer", "WordTokenizer"]
