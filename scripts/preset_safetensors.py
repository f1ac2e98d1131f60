"""Writes a Hugging Face folder (config.json + model.safetensors) for one of silica's Llama-family
presets with random weights, using numpy only, so that loading a model of a real size can be
measured on a machine without torch (scripts/load_memory.sh).

    python preset_safetensors.py --preset models/presets/llama-3.2-1b.json --out DIR \
        [--dtype bf16|f32] [--seed 0]

The matrices are normal(0, initializer_range), the norms ones, as transformers initialises the
architecture. The safetensors file is written by hand (an 8-byte header length, the JSON header,
the raw little-endian data, each tensor's offset 8-byte aligned as the safetensors library does)
because numpy has no bf16: bf16 values are the top 16 bits of the f32 values, rounded to nearest
even. No tokenizer is written; drive the model with token ids.
"""

import argparse
import json
from pathlib import Path

import numpy as np


def tensor_shapes(cfg: dict) -> list[tuple[str, list[int]]]:
    h = cfg["hidden_size"]
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", heads)
    hd = cfg.get("head_dim", h // heads)
    inter = cfg["intermediate_size"]
    vocab = cfg["vocab_size"]
    out = [("model.embed_tokens.weight", [vocab, h])]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", [h]),
            (p + "self_attn.q_proj.weight", [heads * hd, h]),
            (p + "self_attn.k_proj.weight", [kv * hd, h]),
            (p + "self_attn.v_proj.weight", [kv * hd, h]),
            (p + "self_attn.o_proj.weight", [h, heads * hd]),
            (p + "post_attention_layernorm.weight", [h]),
            (p + "mlp.gate_proj.weight", [inter, h]),
            (p + "mlp.up_proj.weight", [inter, h]),
            (p + "mlp.down_proj.weight", [h, inter]),
        ]
    out.append(("model.norm.weight", [h]))
    if not cfg.get("tie_word_embeddings", False):
        out.append(("lm_head.weight", [vocab, h]))
    return out


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    bits = x.astype(np.float32).view(np.uint32)
    # Round to nearest even on the 16 bits dropped (no NaNs here: the values are finite).
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    return (rounded >> 16).astype(np.uint16)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    cfg = json.loads(a.preset.read_text())
    cfg["torch_dtype"] = "bfloat16" if a.dtype == "bf16" else "float32"
    std = float(cfg.get("initializer_range", 0.02))
    shapes = tensor_shapes(cfg)
    esize = 2 if a.dtype == "bf16" else 4

    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes:
        n = int(np.prod(shape)) * esize
        header[name] = {
            "dtype": "BF16" if a.dtype == "bf16" else "F32",
            "shape": shape,
            "data_offsets": [offset, offset + n],
        }
        offset += n
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * (-len(hjson) % 8)

    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    rng = np.random.default_rng(a.seed)
    with open(a.out / "model.safetensors", "wb") as f:
        f.write(len(hjson).to_bytes(8, "little"))
        f.write(hjson)
        for name, shape in shapes:
            if len(shape) == 1:
                x = np.ones(shape, dtype=np.float32)
            else:
                x = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
            data = to_bf16_bits(x) if a.dtype == "bf16" else x
            f.write(data.astype("<u2" if a.dtype == "bf16" else "<f4").tobytes())
    print(f"wrote {a.out} ({offset / 1e9:.2f} GB of {a.dtype} weights, {len(shapes)} tensors)")


if __name__ == "__main__":
    main()
