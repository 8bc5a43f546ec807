"""A CLIP-format BPE tokenizer trained offline with `tokenizers` (for bundles without SD1.5's vocabulary)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# Rare words kept whole in the vocabulary so identity tokens ("<sks>", "<me>") do not share pieces with
# common words (DreamBooth's rare-identifier trick).
RESERVED_WORDS = ("sks", "zwx", "ohwx", "qlx", "vvy", "kxr", "jzy", "pqd")


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2 byte → printable unicode table (the alphabet every CLIP vocabulary starts with)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def train_clip_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 2048,
                         model_max_length: int = 32) -> Path:
    """Train a BPE on `texts` and write vocab.json, merges.txt and tokenizer_config.json (CLIP layout)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    alphabet = list(_bytes_to_unicode().values())
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    # CLIP splits letters runs, single digits and punctuation runs; spaces are dropped
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                             behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet, end_of_word_suffix="</w>",
                                  special_tokens=[BOS, EOS], show_progress=False)
    words = list(texts) + [" ".join(RESERVED_WORDS)] * 50
    tok.train_from_iterator(words, trainer)
    state = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]

    # CLIP layout: 256 bytes, 256 bytes + </w>, merge results in order, then the two special tokens
    vocab: dict[str, int] = {}
    for ch in alphabet:
        vocab.setdefault(ch, len(vocab))
    for ch in alphabet:
        vocab.setdefault(ch + "</w>", len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for special in (BOS, EOS):
        vocab.setdefault(special, len(vocab))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length,
        "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS, "do_lower_case": True,
    }, indent=1))
    return out_dir


def load_clip_tokenizer(folder: str | Path):
    """Load a CLIP tokenizer from vocab.json + merges.txt (no network)."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    cfg_file = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    vocab = json.loads((folder / "vocab.json").read_text())
    lines = (folder / "merges.txt").read_text().splitlines()
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    pad = cfg.get("pad_token", EOS)
    pad = pad if isinstance(pad, str) else pad.get("content", EOS)  # SD1.5 stores an AddedToken dict
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad,
                         model_max_length=int(cfg.get("model_max_length", 77)))
