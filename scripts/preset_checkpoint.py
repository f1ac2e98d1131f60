"""Writes a Hugging Face checkpoint of one of silica's presets with random weights, so that
silica and llama.cpp can be benchmarked on the same weights of a model whose real checkpoint is
not available here (scripts/bench-vs-llamacpp.sh --preset). Used by scripts/preset_gguf.sh.

    python preset_checkpoint.py --preset models/presets/llama-3.2-1b.json \
        --tokenizer-from DIR --out DIR [--seed 0]

The weights are transformers' own initialisation of the architecture (normal(0,
initializer_range) matrices, unit norms) drawn with a fixed seed and stored in bf16, so the f32
and bf16 runs of both tools see exactly the same values. The preset names no tokenizer files;
the one of --tokenizer-from (SmolLM2's here) is copied, and the config's special-token ids are
set to its own. Token ids past that tokenizer's vocabulary are never produced by it; the
embedding and head keep the preset's full vocabulary, so every matrix has the preset's shape.
"""

import argparse
import json
import shutil
from pathlib import Path

import torch
import transformers


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", required=True, type=Path)
    ap.add_argument("--tokenizer-from", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    cfg = json.loads(a.preset.read_text())
    tok_cfg = json.loads((a.tokenizer_from / "config.json").read_text())
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if key in tok_cfg:
            cfg[key] = tok_cfg[key]
        else:
            cfg.pop(key, None)
    cfg.pop("transformers_version", None)
    model_type = cfg.pop("model_type")
    config = transformers.AutoConfig.for_model(model_type, **cfg)

    torch.manual_seed(a.seed)
    # Initialised in bf16 directly: a 1B model in f32 would need twice the memory and time.
    torch.set_default_dtype(torch.bfloat16)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.eval()

    tmp = a.out.with_name(a.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True, max_shard_size="2GB")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        src = a.tokenizer_from / name
        if src.exists():
            shutil.copy(src, tmp / name)
    shutil.rmtree(a.out, ignore_errors=True)
    tmp.rename(a.out)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {a.out}: {model_type}, {params / 1e6:.1f}M parameters (bf16, seed {a.seed})")


if __name__ == "__main__":
    main()
