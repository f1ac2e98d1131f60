#!/usr/bin/env python3
"""Cross-check llama.cpp against the transformers references of scripts/gguf_reference.py, on the
GGUF variants of scripts/make_gguf_variants.sh, and record llama.cpp's own numbers per variant.

For every GGUF file in OUT (the shipped Q4_1 and each variant):
  - last-row logits of every plain-text case (llama-debug --save-logits) vs transformers' f32
    logits (reference-logits.safetensors): max |diff|, top-1 and top-20 agreement;
  - perplexity (llama-perplexity -c 512 -b 512 --chunks 4 -f models/default/corpus.txt), which
    for the f32 file must equal reference.json's perplexity_f32.llamacpp_style;
and, on the f32 file only: token ids of every case (llama-tokenize) vs the HF tokenizer's, and
greedy generation (llama-simple) vs transformers' greedy tokens, also on Q8_0; llama-bench on f32
and Q8_0 (-t THREADS -p 64 -n 64 -r 2).

llama.cpp runs with -fa off -ctk f32 -ctv f32: flash attention and the default f16 KV cache round
the attention inputs to f16 (max |logit diff| 0.012 instead of 2e-5 on the f32 file), which would
hide what the weight format alone does. Results: OUT/llamacpp-check.json.

Usage (normally through `scripts/make_gguf_variants.sh --check`):
    python scripts/gguf_llamacpp_check.py --out target/gguf-ref/smollm2-135m --bin target/llamacpp/bin
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

REPO = Path(__file__).resolve().parent.parent
EXACT_FLAGS = ["-fa", "off", "-ctk", "f32", "-ctv", "f32"]
F32_LOGITS_ATOL = 1e-3  # f32 GGUF vs transformers f32 (observed ~2e-5)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["nice", "-n", "19", *cmd], capture_output=True, text=True, check=True, **kw)


def tokenize(bin_dir: Path, model: Path, text: str) -> list[int]:
    # -p, not -f: common's -f drops one trailing "\n", which the rendered chat template ends with.
    # llama-tokenize parses special tokens (<|im_start|> ...) by default, as HF does.
    out = run([str(bin_dir / "llama-tokenize"), "-m", str(model), "-p", text, "--ids", "--log-disable"]).stdout
    return json.loads(out.strip().splitlines()[-1])


def last_logits(bin_dir: Path, model: Path, text: str, threads: int) -> np.ndarray:
    # llama-debug tokenizes without parsing special tokens, so it is used for the plain-text cases
    # only (a rendered chat would be read as literal "<|im_start|>" text).
    with tempfile.TemporaryDirectory() as d:
        run([str(bin_dir / "llama-debug"), "-m", str(model), "-p", text, "--save-logits",
             "--logits-output-dir", d, "-t", str(threads), *EXACT_FLAGS])
        (path,) = [p for p in Path(d).glob("llamacpp-*.bin") if not p.name.endswith("-tokens.bin")]
        return np.fromfile(path, dtype=np.float32)


def perplexity(bin_dir: Path, model: Path, threads: int, chunks: int, ctx: int) -> dict:
    cp = run([str(bin_dir / "llama-perplexity"), "-m", str(model), "-f", str(REPO / "models/default/corpus.txt"),
              "-c", str(ctx), "-b", str(ctx), "--chunks", str(chunks), "-t", str(threads), *EXACT_FLAGS])
    m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", cp.stdout + cp.stderr)
    if not m:
        sys.exit(f"no PPL in llama-perplexity output for {model}")
    return {"ppl": float(m.group(1)), "stderr": float(m.group(2))}


def greedy(bin_dir: Path, model: Path, prompt: str, n: int) -> str:
    # llama-simple: greedy sampler only, prints the prompt then each token's piece, stops at an
    # end-of-generation token (not printed), then prints one "\n".
    out = run([str(bin_dir / "llama-simple"), "-m", str(model), "-n", str(n), prompt]).stdout
    return out[:-1] if out.endswith("\n") else out


def bench(bin_dir: Path, model: Path, threads: int) -> list[dict]:
    out = run([str(bin_dir / "llama-bench"), "-m", str(model), "-t", str(threads), "-p", "64", "-n", "64",
               "-r", "2", "-o", "json"]).stdout
    keep = ("n_prompt", "n_gen", "n_threads", "avg_ts", "stddev_ts", "model_type", "model_size", "build_commit")
    return [{k: r.get(k) for k in keep} for r in json.loads(out)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "target/gguf-ref/smollm2-135m")
    ap.add_argument("--bin", type=Path, default=REPO / "target/llamacpp/bin")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    out, bin_dir, threads = args.out.resolve(), args.bin.resolve(), args.threads
    ref = json.loads((out / "reference.json").read_text(encoding="utf-8"))
    hf_logits = load_file(str(out / "reference-logits.safetensors"))
    cases = ref["cases"]
    texts = {name: c["prompt"] if c["kind"] == "text" else c["rendered"] for name, c in cases.items()}
    ppl_ref = ref["perplexity_f32"]
    eos_text = ref["tokenizer"]["eos_token"]

    files = sorted(out.glob("smollm2-135m-*.gguf")) + sorted(out.glob("SmolLM2-*.gguf"))
    f32 = out / "smollm2-135m-f32.gguf"
    result: dict = {"flags": EXACT_FLAGS, "threads": threads,
                    "build": (bin_dir / "VERSION").read_text().splitlines()[0], "files": {}}
    failures = []

    t0 = time.time()
    tok = {}
    for name, text in texts.items():
        ids = tokenize(bin_dir, f32, text)
        tok[name] = {"match": ids == cases[name]["ids"], "llamacpp_ids": ids}
        if ids != cases[name]["ids"]:
            failures.append(f"tokenize {name}")
    result["tokenize"] = tok
    print(f"tokenize: {sum(v['match'] for v in tok.values())}/{len(tok)} cases match HF ids")

    for path in files:
        t = time.time()
        entry: dict = {"bytes": path.stat().st_size, "logits": {}}
        for name, text in texts.items():
            if cases[name]["kind"] != "text":
                continue
            cpp = last_logits(bin_dir, path, text, threads)
            hf = hf_logits[f"{name}.f32"]
            top_hf, top_cpp = np.argsort(-hf)[:20], np.argsort(-cpp)[:20]
            entry["logits"][name] = {
                "max_abs_diff": float(np.abs(cpp - hf).max()),
                "top1_match": bool(top_hf[0] == top_cpp[0]),
                "top20_overlap": len(set(top_hf.tolist()) & set(top_cpp.tolist())),
            }
        entry["perplexity"] = perplexity(bin_dir, path, threads, ppl_ref["tokens_used"] // ppl_ref["window"],
                                         ppl_ref["window"])
        worst = max(v["max_abs_diff"] for v in entry["logits"].values())
        top1 = sum(v["top1_match"] for v in entry["logits"].values())
        print(f"{path.name:40s} max|dlogit| {worst:9.2e}  top1 {top1}/{len(entry['logits'])}  "
              f"ppl {entry['perplexity']['ppl']:.4f}  ({time.time() - t:.0f}s)")
        result["files"][path.name] = entry
    f32_entry = result["files"][f32.name]
    if max(v["max_abs_diff"] for v in f32_entry["logits"].values()) > F32_LOGITS_ATOL:
        failures.append(f"f32 logits differ by more than {F32_LOGITS_ATOL}")
    if abs(f32_entry["perplexity"]["ppl"] - ppl_ref["llamacpp_style"]["ppl"]) > 1e-3:
        failures.append("f32 perplexity differs from perplexity_f32.llamacpp_style")
    print(f"perplexity f32: llama.cpp {f32_entry['perplexity']['ppl']:.4f}, "
          f"transformers (llama.cpp-style) {ppl_ref['llamacpp_style']['ppl']:.4f}")

    result["greedy"] = {}
    for v in ("f32", "Q8_0"):
        path = out / f"smollm2-135m-{v}.gguf"
        for name in ("capital", "chat"):
            hf = ref["cases"][name]["f32"]["greedy"]
            want = texts[name] + (hf["text"][: -len(eos_text)] if hf["stopped_at_eos"] else hf["text"])
            got = greedy(bin_dir, path, texts[name], ref["greedy"]["max_new_tokens"])
            prefix = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
            match = got == want
            result["greedy"][f"{v}/{name}"] = {"match": match, "llamacpp": got[len(texts[name]):],
                                               "transformers_f32": want[len(texts[name]):],
                                               "common_prefix_chars": prefix - len(texts[name])}
            print(f"greedy {v}/{name}: {'MATCH' if match else 'differ after ' + str(prefix - len(texts[name])) + ' chars'}: "
                  f"{got[len(texts[name]):]!r}")
            if v == "f32" and not match:
                failures.append(f"greedy f32/{name}")

    result["bench"] = {}
    for v in ("f32", "Q8_0"):
        rows = bench(bin_dir, out / f"smollm2-135m-{v}.gguf", threads)
        result["bench"][v] = rows
        for r in rows:
            test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
            print(f"llama-bench {v:5s} {test:5s} {r['avg_ts']:8.2f} ± {r['stddev_ts']:.2f} t/s (t={r['n_threads']})")
    result["failures"] = failures
    (out / "llamacpp-check.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out / 'llamacpp-check.json'} in {time.time() - t0:.0f}s")
    if failures:
        sys.exit("FAILED: " + "; ".join(failures))


if __name__ == "__main__":
    main()
