"""Drives a silica deployment with the real `openai` client while replicas restart.

Workers send chat completions (half of them streamed) and completions through the load
balancer, with the client's own retries off (max_retries=0), so every failure the balancer and
the servers let through is counted. Runs until the file named by --stop exists, then prints a
JSON summary: requests, failures (with their messages), tokens received.
"""

import argparse
import json
import os
import threading
import time

import openai


def worker(url, model, stop, stats, lock, i):
    c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
    n = 0
    while not os.path.exists(stop):
        n += 1
        kind = ("stream", "chat", "completion")[(i + n) % 3]
        try:
            if kind == "stream":
                toks = 0
                s = c.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": f"story {i}.{n}"}],
                    max_tokens=48, stream=True, stream_options={"include_usage": True},
                    extra_body={"ignore_eos": True})
                finish = None
                for chunk in s:
                    if chunk.choices and chunk.choices[0].finish_reason:
                        finish = chunk.choices[0].finish_reason
                    if chunk.usage:
                        toks = chunk.usage.completion_tokens
                if finish != "length" or toks != 48:
                    raise RuntimeError(f"stream ended with {finish!r} after {toks} tokens")
            elif kind == "chat":
                r = c.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": f"hi {i}.{n}"}],
                    max_tokens=24, extra_body={"ignore_eos": True})
                toks = r.usage.completion_tokens
                if r.choices[0].finish_reason != "length" or toks != 24:
                    raise RuntimeError(f"chat ended {r.choices[0].finish_reason!r}, {toks}")
            else:
                r = c.completions.create(model=model, prompt=f"count {i} {n}", max_tokens=16,
                                         extra_body={"ignore_eos": True})
                toks = r.usage.completion_tokens
                if toks != 16:
                    raise RuntimeError(f"completion gave {toks} tokens")
            with lock:
                stats["ok"] += 1
                stats["tokens"] += toks
        except Exception as e:  # every failure is the result, not a crash
            with lock:
                stats["failed"] += 1
                if len(stats["errors"]) < 10:
                    stats["errors"].append(f"{kind}: {type(e).__name__}: {e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--stop", required=True, help="stop when this file exists")
    a = ap.parse_args()
    stats = {"ok": 0, "failed": 0, "tokens": 0, "errors": []}
    lock = threading.Lock()
    t0 = time.time()
    ts = [threading.Thread(target=worker, args=(a.url, a.model, a.stop, stats, lock, i))
          for i in range(a.concurrency)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    stats["seconds"] = round(time.time() - t0, 2)
    stats["requests"] = stats["ok"] + stats["failed"]
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
