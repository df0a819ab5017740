"""CLAP's text tokenizer: RoBERTa byte-level BPE on the `tokenizers` library.

Matches transformers' RobertaTokenizerFast and RobertaTokenizer as the reference pipeline calls
them: `<s> ... </s>` around the BPE pieces, truncation at `model_max_length` (from
tokenizer_config.json), padding with `<pad>` to a fixed length or to the longest prompt, and an
attention mask. Loads `tokenizer.json` when the checkpoint has it, else builds the same tokenizer
from `vocab.json` + `merges.txt`.
"""

from __future__ import annotations

import json
import threading
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from .config import read_json
from .errors import CheckpointError

# RoBERTa's special tokens and how they match in text (<mask> swallows the space before it).
NO_LIMIT = int(1e29)  # transformers writes int(1e30) for "no model_max_length": anything this large means none
SPECIALS = {"<s>": {}, "<pad>": {}, "</s>": {}, "<unk>": {}, "<mask>": {"lstrip": True, "normalized": False}}


class ClapTokenizer:
    def __init__(self, tokenizer: Tokenizer, model_max_length: Optional[int], pad_token: str = "<pad>"):
        self.tokenizer = tokenizer
        self.model_max_length = model_max_length
        self.pad_token_id = tokenizer.token_to_id(pad_token)
        if self.pad_token_id is None:
            raise CheckpointError(f"tokenizer: the vocabulary has no pad token {pad_token!r}")
        self.pad_token = pad_token
        # the Rust tokenizer's truncation and padding are settings of the object, changed per call: a lock
        # makes a call's settings and its encoding one step, so threads can share the pipeline
        self.lock = threading.Lock()

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "ClapTokenizer":
        """Load `tokenizer/` of the checkpoint (tokenizer_config.json + tokenizer.json or vocab/merges)."""
        folder = Path(folder)
        config = read_json(folder / "tokenizer_config.json")
        max_length = config.get("model_max_length")
        if isinstance(max_length, (int, float)) and not isinstance(max_length, bool) and max_length >= NO_LIMIT:
            max_length = None  # transformers' "no limit" (int(1e30)): no truncation
        elif not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 3:
            raise CheckpointError(f"{folder / 'tokenizer_config.json'}: model_max_length must be an integer >= 3, "
                                  f"got {max_length!r}")
        if (folder / "tokenizer.json").is_file():
            try:
                tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
            except Exception as e:  # tokenizers raises a bare Exception on malformed files
                raise CheckpointError(f"{folder / 'tokenizer.json'}: cannot be read ({e})") from None
        else:
            tok = _from_vocab_and_merges(folder, config)
        return cls(tok, max_length, config.get("pad_token", "<pad>") if isinstance(config.get("pad_token"), str)
                   else "<pad>")

    def __call__(self, texts: Sequence[str], *, pad_to_max_length: bool = True,
                 truncate: bool = True, max_length: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, both (B, L) int64.

        pad_to_max_length: L = model_max_length (the pipeline's encoding); else the longest prompt
        (the ranking's encoding). truncate: cut at max_length (default model_max_length), `</s>` kept.
        """
        tok = self.tokenizer
        limit = max_length or self.model_max_length  # None: the config sets no limit
        with self.lock:
            if truncate and limit is not None:
                tok.enable_truncation(limit)
            else:
                tok.no_truncation()
            tok.enable_padding(pad_id=self.pad_token_id, pad_token=self.pad_token,
                               length=self.model_max_length if pad_to_max_length else None)
            encodings = tok.encode_batch(list(texts), add_special_tokens=True)
        for text, e in zip(texts, encodings):
            if e.overflowing:  # as the reference, which logs the part it cut
                warnings.warn(f"a prompt longer than {limit} tokens was cut to its first {limit}, all that CLAP "
                              f"reads: {text[:40]!r}... ({len(text)} characters)")
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        return ids, mask


def _from_vocab_and_merges(folder: Path, config: dict) -> Tokenizer:
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    for p in (vocab_path, merges_path):
        if not p.is_file():
            raise CheckpointError(f"{p}: file not found (and no tokenizer.json in {folder})")
    try:
        vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{vocab_path}: not valid JSON ({e})") from None
    lines = merges_path.read_text(encoding="utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
    bad = [m for m in merges if len(m) != 2]
    if bad:
        raise CheckpointError(f"{merges_path}: every merge must be two tokens, found {' '.join(bad[0])!r}")
    add_prefix_space = bool(config.get("add_prefix_space", False))
    trim_offsets = bool(config.get("trim_offsets", True))
    tok = Tokenizer(models.BPE(vocab, merges, unk_token=None, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tok.decoder = decoders.ByteLevel()
    for token in ("<s>", "</s>"):
        if token not in vocab:
            raise CheckpointError(f"{vocab_path}: the vocabulary has no {token!r}")
    tok.post_processor = processors.RobertaProcessing(("</s>", vocab["</s>"]), ("<s>", vocab["<s>"]),
                                                      trim_offsets=trim_offsets, add_prefix_space=add_prefix_space)
    tok.add_special_tokens([AddedToken(t, special=True, **_flags(config, t)) for t in SPECIALS if t in vocab])
    return tok


def _flags(config: dict, token: str) -> dict:
    """How a special token matches in text: tokenizer_config.json's added_tokens_decoder, else RoBERTa's."""
    for entry in (config.get("added_tokens_decoder") or {}).values():
        if isinstance(entry, dict) and entry.get("content") == token:
            return {k: bool(entry[k]) for k in ("lstrip", "rstrip", "single_word", "normalized") if k in entry}
    return dict(SPECIALS[token])
