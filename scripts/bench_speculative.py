"""Speculative decoding's speed-up on a real model, end to end: two `silica serve` processes on
the same checkpoint, one with `--speculative-ngram K` (or, with --draft, `--speculative-model
DRAFT --num-speculative-tokens K`), the same greedy chat requests to each (one at a time), and
the outputs compared token for token. Prompts ask the model to copy or edit a passage it was
given, the work prompt lookup suits (as vLLM's ngram method); with a draft model, open-ended
prompts are added.

    python scripts/bench_speculative.py --model target/gguf/SmolLM2-135M-Instruct.Q4_1.gguf [--k 4]
    python scripts/bench_speculative.py --model target/gguf-ref/smollm2-135m/hf-f32 \
        --draft target/gguf/SmolLM2-135M-Instruct.Q4_1.gguf

Needs the openai client (scripts/serve_check.sh's .venv-serve). Prints one JSON line.
"""

import argparse
import json
import re
import subprocess
import threading
import sys
import time

import openai

PASSAGE = ("The quick brown fox jumps over the lazy dog. The dog sleeps under the old oak tree, "
           "and the fox runs back into the forest before the farmer wakes up. ")
PROMPTS = [
    "Repeat the following text exactly, word for word:\n\n" + PASSAGE * 2,
    "Rewrite this text, replacing 'fox' with 'cat':\n\n" + PASSAGE * 2,
    "Copy this list:\n" + "\n".join(f"- item {i}: value {i * 7}" for i in range(12)),
]
OPEN_PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a refrigerator keeps food cold, for a ten-year-old.",
    "List five tips for learning a new programming language, with one sentence each.",
]


def start(binary, model, extra):
    p = subprocess.Popen([binary, "serve", "--port", "0", "--model", model, *extra],
                         stderr=subprocess.PIPE, text=True)
    for line in p.stderr:
        # It listens at once (503 while loading) and says when the model is ready.
        m = re.search(r"ready on (http://\S+)", line)
        if m:
            # Keep reading its stderr (the access log) so the server never blocks on the pipe.
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            return p, m.group(1)
    sys.exit(f"silica serve did not start: {p.wait()}")


def run(url, max_tokens, reps, prompts=PROMPTS):
    c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
    model = c.models.list().data[0].id
    outs, toks, t0 = [], 0, time.perf_counter()
    for _ in range(reps):
        for p in prompts:
            r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": p}],
                                          max_tokens=max_tokens, temperature=0)
            outs.append(r.choices[0].message.content)
            toks += r.usage.completion_tokens
    return outs, toks, time.perf_counter() - t0


def metric(url, name):
    import urllib.request
    text = urllib.request.urlopen(url + "/metrics").read().decode()
    return float(next(l.split()[-1] for l in text.splitlines() if l.startswith(name + " ")))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--binary", default="target/release/silica")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--draft", help="a draft model (folder or GGUF) instead of prompt lookup")
    ap.add_argument("--draft-quantize", choices=["int8", "fp8"], help="quantize the draft at load")
    ap.add_argument("--dtype", default="f32", help="the models' --dtype")
    a = ap.parse_args()
    if a.draft:
        spec = ["--speculative-model", a.draft, "--num-speculative-tokens", str(a.k)]
        if a.draft_quantize:
            spec += ["--speculative-quantize", a.draft_quantize]
        prompts = PROMPTS + OPEN_PROMPTS
    else:
        spec, prompts = ["--speculative-ngram", str(a.k)], PROMPTS
    rows = {}
    for label, extra in [("plain", []), ("speculative", spec)]:
        p, url = start(a.binary, a.model, ["--dtype", a.dtype, *extra])
        try:
            run(url, 8, 1)  # warm-up: compile and page in
            outs, toks, wall = run(url, a.max_tokens, a.reps, prompts)
            drafted = metric(url, "silica_spec_decode_draft_tokens_total")
            accepted = metric(url, "silica_spec_decode_accepted_tokens_total")
        finally:
            p.terminate()
            p.wait()
        rows[label] = dict(outs=outs, tok_s=toks / wall, tokens=toks, drafted=drafted, accepted=accepted)
    same = rows["plain"]["outs"] == rows["speculative"]["outs"]
    s = rows["speculative"]
    print(json.dumps({
        "model": a.model, "draft": a.draft or "prompt lookup", "k": a.k, "identical_outputs": same,
        "plain_tok_s": round(rows["plain"]["tok_s"], 1), "speculative_tok_s": round(s["tok_s"], 1),
        "speedup": round(s["tok_s"] / rows["plain"]["tok_s"], 2),
        "acceptance_rate": round(s["accepted"] / max(s["drafted"], 1), 3),
        "accepted_per_output_token": round(s["accepted"] / max(s["tokens"], 1), 3),
    }))
    if not same:
        sys.exit("speculative outputs differ from plain decoding")


if __name__ == "__main__":
    main()
