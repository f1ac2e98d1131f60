#!/usr/bin/env python3
"""Outside reference for `silica quantize` (compressed-tensors checkpoints).

For each HF fixture and each format (int8, fp8), `silica quantize` writes a checkpoint; then:

1. **The scheme, bit for bit**: PyTorch quantizes the fixture's own f32 weights with the scheme
   silica documents (per output row: scale = max|w| / 127 or / 448, int8 = clamp(round_half_even
   (w / scale), -127, 127), fp8 = float8_e4m3fn(clamp(w / scale, -448, 448)), all in f32) and
   the bytes and scales must equal what silica wrote.
2. **Another tool reads it**: transformers with compressed-tensors loads the folder
   (`CompressedTensorsConfig(dequantize=True)`), its decompressed weights must equal q · scale
   exactly, and its logits for fixed ids are recorded.
3. **silica reads it**: `silica logits --model OUT` must be within 1e-4 of transformers.

Writes models/reference/compressed-tensors.json (sha256 of each written model.safetensors, the
ids, the checks' results, versions) and compressed-tensors.safetensors (transformers' logits),
which crates/models/tests/compressed.rs checks in CI without Python: silica writes the same
file today, and its logits on it still match transformers'.

    SILICA_BIN=target/release/silica .venv-gguf/bin/python scripts/compressed_reference.py
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ["llama3-tied", "qwen2-bias-tied", "llama2-mha-linear"]
FORMATS = {"int8": ("int8", 127.0), "fp8": ("fp8-e4m3", 448.0)}
IDS = [1, 5, 9, 2, 7, 3, 11, 4]
TOL = 1e-4


def quantize_rows(w: torch.Tensor, fmt: str):
    qmax = FORMATS[fmt][1]
    m = w.abs().amax(dim=1, keepdim=True)
    scale = torch.where((m == 0) | ~torch.isfinite(m), torch.ones_like(m), m / qmax)
    x = w / scale
    if fmt == "int8":
        q = torch.round(x).clamp(-127, 127).to(torch.int8)  # torch.round: half to even
    else:
        q = x.clamp(-448, 448).to(torch.float8_e4m3fn)
    return q, scale


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "models/reference"))
    args = ap.parse_args()
    silica = os.environ.get("SILICA_BIN", str(ROOT / "target/release/silica"))
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig
    import compressed_tensors
    import transformers

    cases, logits_out, failures = [], {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for fixture in FIXTURES:
            src = ROOT / "models/fixtures" / fixture
            source = {k: v.float() for k, v in load_file(str(src / "model.safetensors")).items()}
            for fmt in FORMATS:
                out = Path(tmp) / f"{fixture}-{fmt}"
                subprocess.run([silica, "quantize", "--model", str(src), "--to", fmt, "--out", str(out)],
                               check=True, stdout=subprocess.DEVNULL)
                st = load_file(str(out / "model.safetensors"))
                # 1. the scheme, bit for bit
                scheme_ok, n_quantized = True, 0
                for name, t in st.items():
                    if not name.endswith(".weight_scale"):
                        continue
                    base = name[: -len("_scale")]
                    q, s = quantize_rows(source[base], fmt)
                    same = torch.equal(st[base].view(torch.uint8), q.view(torch.uint8)) and torch.equal(t, s)
                    if not same:
                        failures.append(f"{fixture} {fmt}: {base} differs from PyTorch's quantization")
                        scheme_ok = False
                    n_quantized += 1
                # 2. transformers + compressed-tensors
                model = AutoModelForCausalLM.from_pretrained(
                    str(out), dtype=torch.float32, attn_implementation="eager",
                    quantization_config=CompressedTensorsConfig(dequantize=True))
                model.eval()
                params = dict(model.named_parameters())
                decompress_ok = True
                for name, t in st.items():
                    if name.endswith(".weight_scale"):
                        base = name[: -len("_scale")]
                        want = st[base].to(torch.float32) * t
                        if not torch.equal(params[base].detach(), want):
                            failures.append(f"{fixture} {fmt}: transformers' {base} != q * scale")
                            decompress_ok = False
                with torch.no_grad():
                    ref = model(torch.tensor([IDS])).logits[0].numpy().astype(np.float32)
                # 3. silica on the same folder
                lf = Path(tmp) / f"{fixture}-{fmt}.logits.safetensors"
                subprocess.run([silica, "logits", "--model", str(out), "--token-ids", ",".join(map(str, IDS)),
                                "--out", str(lf)], check=True, stdout=subprocess.DEVNULL)
                got = load_file(str(lf))["logits"].float().numpy().reshape(ref.shape)
                diff = float(np.abs(got - ref).max())
                if diff > TOL:
                    failures.append(f"{fixture} {fmt}: silica vs transformers logits differ by {diff}")
                key = f"{fixture}/{fmt}"
                logits_out[key] = ref
                sha = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
                cases.append({
                    "fixture": fixture, "format": fmt, "key": key,
                    "model_safetensors_sha256": sha, "quantized_matrices": n_quantized,
                    "scheme_bit_exact_vs_pytorch": scheme_ok,
                    "transformers_decompressed_equals_q_times_scale": decompress_ok,
                    "silica_vs_transformers_max_abs": diff,
                })
                print(f"{key}: {n_quantized} matrices, scheme exact {scheme_ok}, "
                      f"decompressed exact {decompress_ok}, silica vs transformers {diff:.2e}")
    doc = {
        "description": "silica quantize output read by transformers + compressed-tensors "
                       "(scripts/compressed_reference.py)",
        "computation": "AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, "
                       "attn_implementation='eager', quantization_config="
                       "CompressedTensorsConfig(dequantize=True)); logits of `ids` at every position",
        "ids": IDS, "tolerance": {"logits_abs": TOL},
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                     "transformers": transformers.__version__,
                     "compressed_tensors": compressed_tensors.__version__},
        "cases": cases,
    }
    out = Path(args.out)
    (out / "compressed-tensors.json").write_text(json.dumps(doc, indent=1) + "\n")
    save_file(logits_out, str(out / "compressed-tensors.safetensors"))
    if failures:
        print("\n".join(failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
