"""A real CLIP tokenizer built offline from the BPE vocabulary that ships inside ``open_clip_torch``.

Stable Diffusion's tokenizer is CLIP's byte-level BPE. Its vocabulary is defined by CLIP's own code: the 256
byte tokens, the same 256 with the end-of-word marker ``</w>``, the first 49152 − 256 − 2 merges of
``bpe_simple_vocab_16e6.txt.gz`` (each merge joined into one token), then ``<|startoftext|>`` and
``<|endoftext|>`` — 49408 tokens in all, the same ids as ``openai/clip-vit-large-patch14``'s tokenizer.
No file is downloaded: the merges come from the installed ``open_clip`` package.

Tiny models may keep only the first ``n_merges`` merges: the same BPE, a smaller vocabulary (words then split
into more pieces), so their text embedding tables stay small.
"""

from __future__ import annotations

import functools
import gzip
import os

FULL_MERGES = 49152 - 256 - 2  # 48894, CLIP's vocabulary definition
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible map from bytes to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


@functools.lru_cache(maxsize=1)
def _all_merges() -> tuple[tuple[str, str], ...]:
    import open_clip

    path = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    with gzip.open(path) as fh:
        lines = fh.read().decode("utf-8").split("\n")
    # Line 0 is a version header; CLIP uses the next 49152 - 256 - 2 merges.
    return tuple(tuple(line.split()) for line in lines[1:FULL_MERGES + 1])


@functools.lru_cache(maxsize=4)
def clip_vocabulary(n_merges: int | None = None) -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """``(vocab, merges)`` of CLIP's BPE, optionally restricted to the first ``n_merges`` merges."""
    merges = _all_merges()
    if n_merges is not None:
        if not 0 <= n_merges <= FULL_MERGES:
            raise ValueError(f"n_merges must be in [0, {FULL_MERGES}], got {n_merges}")
        merges = merges[:n_merges]
    tokens = list(_bytes_to_unicode().values())
    tokens += [t + "</w>" for t in tokens]
    tokens += ["".join(m) for m in merges]
    tokens += [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_tokenizer(max_length: int = 77, n_merges: int | None = None):
    """A ``transformers.CLIPTokenizer`` with CLIP's vocabulary; ``model_max_length`` = ``max_length``.

    ``n_merges=None`` gives the full 49408-token vocabulary of Stable Diffusion's tokenizer.
    """
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocabulary(n_merges)
    try:  # transformers >= 5 builds the BPE from in-memory vocab and merges
        return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=max_length)
    except TypeError:  # transformers 4 wants files
        import json
        import tempfile

        folder = tempfile.mkdtemp(prefix="advbench-clip-bpe-")
        with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as fh:
            json.dump(vocab, fh)
        with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as fh:
            fh.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
        return CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"),
                             model_max_length=max_length)
