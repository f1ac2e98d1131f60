"""Drives `silica serve` with the real `openai` Python client.

Checks completions, chat, streaming (SSE, [DONE], usage), OpenAI error types, then a load test of
N concurrent streams that must all succeed, and that the server's KV blocks in use return to 0.
With --bench, also measures output throughput and inter-token latency at given concurrencies.
Exits non-zero on any failure. Usage:

    python scripts/serve_openai_check.py --base-url http://127.0.0.1:8000 --model silica-tiny
"""

import argparse
import asyncio
import json
import sys
import time
import urllib.request

import openai


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def metrics(base):
    with urllib.request.urlopen(base + "/metrics", timeout=30) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def wait_blocks_zero(base):
    deadline = time.time() + 60
    while True:
        m = metrics(base)
        if m["silica_kv_blocks_in_use"] == 0 and m["silica_running_requests"] == 0 and m["silica_queue_depth"] == 0:
            return m
        if time.time() > deadline:
            fail(f"KV blocks in use never returned to 0: {m['silica_kv_blocks_in_use']}")
        time.sleep(0.1)


def functional(client, model, base):
    names = [m.id for m in client.models.list().data]
    check(model in names, f"/v1/models lists {names}, not {model}")

    greedy = dict(max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    c = client.completions.create(model=model, prompt="The quick brown fox", **greedy)
    check(c.object == "text_completion", f"object {c.object}")
    check(c.usage.completion_tokens == 12, f"usage {c.usage}")
    check(c.usage.total_tokens == c.usage.prompt_tokens + 12, f"usage {c.usage}")
    check(c.choices[0].finish_reason == "length", f"finish_reason {c.choices[0].finish_reason}")
    text = c.choices[0].text

    chunks = list(client.completions.create(model=model, prompt="The quick brown fox", stream=True,
                                            stream_options={"include_usage": True}, **greedy))
    streamed = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    check(streamed == text, f"streamed {streamed!r} != non-streamed {text!r}")
    check(chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12, "usage chunk")
    check(sum(1 for ch in chunks if ch.choices and ch.choices[0].finish_reason is None) == 12,
          "one chunk per generated token")

    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello!"}]
    r = client.chat.completions.create(model=model, messages=msgs, **greedy)
    check(r.choices[0].message.role == "assistant", "chat role")
    check(r.usage.completion_tokens == 12, f"chat usage {r.usage}")
    ctext = r.choices[0].message.content
    parts = []
    for ch in client.chat.completions.create(model=model, messages=msgs, stream=True, **greedy):
        if ch.choices and ch.choices[0].delta.content:
            parts.append(ch.choices[0].delta.content)
    check("".join(parts) == ctext, "streamed chat text differs")

    s1 = client.completions.create(model=model, prompt="seeded", max_tokens=16, temperature=1.0, seed=7)
    s2 = client.completions.create(model=model, prompt="seeded", max_tokens=16, temperature=1.0, seed=7)
    check(s1.choices[0].text == s2.choices[0].text, "same seed, different text")

    for kwargs, exc in [
        (dict(model="no-such-model", prompt="x"), openai.NotFoundError),
        (dict(model=model, prompt="x", max_tokens=-1), openai.BadRequestError),
        (dict(model=model, prompt="x", temperature=-2), openai.BadRequestError),
        (dict(model=model, prompt="x" * 100000), openai.BadRequestError),
    ]:
        try:
            client.completions.create(**kwargs)
            fail(f"{kwargs} succeeded")
        except exc as e:
            check(isinstance(e.body, dict) and "message" in e.body, f"error body {e.body}")
    # Fields the server does not implement are refused with a 400 naming them, never ignored.
    tool = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
    for field, kwargs in [
        ("response_format", dict(response_format={"type": "json_schema",
                                                  "json_schema": {"name": "x", "schema": {"type": "nope"}}})),
        ("response_format", dict(response_format={"type": "json_schema", "json_schema": {"name": "x"}})),
        ("tools", dict(tools=[tool])),
        ("logit_bias", dict(logit_bias={"99999999": 10})),
        ("n", dict(n=99)),
        ("top_logprobs", dict(logprobs=True, top_logprobs=21)),
        ("presence_penalty", dict(presence_penalty=3)),
    ]:
        try:
            client.chat.completions.create(model=model, messages=msgs, max_tokens=4, **kwargs)
            fail(f"{field} was accepted")
        except openai.BadRequestError as e:
            check(e.body.get("param") == field or f"`{field}`" in str(e.body.get("message", "")),
                  f"error names {field}: {e.body}")
    print("functional checks: ok")
    sampling_features(client, model, msgs)
    structured(client, model)


def structured(client, model, requests=24):
    """JSON that validates against its schema (the real `jsonschema`) on every one of many seeded
    requests sampled at temperature 1 from a random-weight model; vLLM's regex and choice forms."""
    import re
    import jsonschema
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 10},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "email": {"type": "string", "pattern": "^[a-z]{1,8}@[a-z]{1,8}\\.com$"},
            "roles": {"type": "array", "items": {"enum": ["admin", "user", "guest"]},
                      "minItems": 1, "maxItems": 3},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
            "address": {"type": "object", "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                        "required": ["zip"], "additionalProperties": False},
        },
        "required": ["name", "age", "email", "roles", "address"],
        "additionalProperties": False,
    }
    jsonschema.Draft202012Validator.check_schema(schema)
    msgs = [{"role": "user", "content": "Give me a user record."}]
    stops = 0
    for seed in range(requests):
        r = client.chat.completions.create(
            model=model, messages=msgs, max_tokens=200, temperature=1.0, seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "user", "schema": schema, "strict": True}})
        text = r.choices[0].message.content
        check(r.choices[0].finish_reason == "stop", f"seed {seed}: finish {r.choices[0].finish_reason}: {text!r}")
        try:
            jsonschema.validate(json.loads(text), schema)
        except Exception as e:  # noqa: BLE001 - any failure is the check's failure
            fail(f"seed {seed}: {text!r} does not validate: {e}")
        stops += 1
    o = client.chat.completions.create(model=model, messages=msgs, max_tokens=200, temperature=1.0, seed=1,
                                       response_format={"type": "json_object"})
    if o.choices[0].finish_reason == "stop":
        check(isinstance(json.loads(o.choices[0].message.content), dict), "json_object output is not an object")
    rx = "[a-z]{3}-[0-9]{3}"
    for seed in range(6):
        c = client.completions.create(model=model, prompt="Code:", max_tokens=20, temperature=1.0, seed=seed,
                                      extra_body={"structured_outputs": {"regex": rx}})
        check(re.fullmatch(rx, c.choices[0].text), f"regex output {c.choices[0].text!r}")
        c = client.completions.create(model=model, prompt="Pick:", max_tokens=20, temperature=1.0, seed=seed,
                                      extra_body={"guided_choice": ["red", "green", "blue"]})
        check(c.choices[0].text in ("red", "green", "blue"), f"choice output {c.choices[0].text!r}")
    print(f"structured output: {stops} of {requests} seeded json_schema outputs validate (jsonschema), "
          "json_object, regex and choice: ok")


def sampling_features(client, model, msgs):
    """logprobs (chat and completions), n > 1, logit_bias, penalties and echo, as the client
    parses them."""
    greedy = dict(max_tokens=6, temperature=0, extra_body={"ignore_eos": True})
    r = client.chat.completions.create(model=model, messages=msgs, logprobs=True, top_logprobs=3, **greedy)
    content = r.choices[0].logprobs.content
    check(len(content) == 6, f"{len(content)} chat logprob entries")
    for e in content:
        check(len(e.top_logprobs) == 3 and e.top_logprobs[0].logprob == e.logprob,
              f"greedy token is not the most likely: {e}")
        check(bytes(e.bytes).decode() == e.token, f"bytes {e.bytes} vs token {e.token!r}")
    streamed = []
    for ch in client.chat.completions.create(model=model, messages=msgs, logprobs=True, stream=True, **greedy):
        if ch.choices and ch.choices[0].logprobs and ch.choices[0].logprobs.content:
            streamed += [e.logprob for e in ch.choices[0].logprobs.content]
    check(streamed == [e.logprob for e in content], "streamed chat logprobs differ")

    c = client.completions.create(model=model, prompt="The quick brown fox", logprobs=2, **greedy)
    lp = c.choices[0].logprobs
    check(len(lp.tokens) == 6 and len(lp.token_logprobs) == 6 and len(lp.top_logprobs) == 6,
          f"completion logprobs {lp}")
    check(all(t in top for t, top in zip(lp.tokens, lp.top_logprobs)), "chosen token not listed")

    e = client.completions.create(model=model, prompt="The quick brown fox", echo=True, logprobs=1,
                                  max_tokens=2, temperature=0)
    check(e.choices[0].text.startswith("The quick brown fox"), f"echo text {e.choices[0].text!r}")
    check(e.choices[0].logprobs.token_logprobs[0] is None, "echo: the first prompt token has a logprob")

    # n = 2 with a seed: two distinct choices, the same again; the prompt counted once.
    kw = dict(model=model, prompt="Once upon a time", max_tokens=12, temperature=1.0, seed=11, n=2,
              extra_body={"ignore_eos": True})
    a, b = client.completions.create(**kw), client.completions.create(**kw)
    texts = [ch.text for ch in sorted(a.choices, key=lambda ch: ch.index)]
    check(len(texts) == 2 and texts[0] != texts[1], f"n=2 choices not distinct: {texts}")
    check(texts == [ch.text for ch in sorted(b.choices, key=lambda ch: ch.index)], "n=2 not reproducible")
    check(a.usage.completion_tokens == 24, f"n=2 usage {a.usage}")
    chunks = list(client.chat.completions.create(model=model, messages=msgs, n=2, stream=True, seed=3,
                                                 temperature=1.0, max_tokens=5))
    check(sorted({ch.choices[0].index for ch in chunks if ch.choices}) == [0, 1], "streamed n=2 indices")

    # logit_bias: +100 on one token id makes greedy decoding pick it every time.
    f = client.completions.create(model=model, prompt="x", logit_bias={"65": 100}, logprobs=0, **greedy)
    toks = f.choices[0].logprobs.tokens
    check(len(set(toks)) == 1, f"logit_bias did not force one token: {toks}")
    client.completions.create(model=model, prompt="x", presence_penalty=1.5, frequency_penalty=-0.5, **greedy)
    print("logprobs, echo, n, logit_bias, penalties: ok")


TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": {"type": "object",
                       "properties": {"city": {"type": "string", "maxLength": 12},
                                      "unit": {"enum": ["c", "f"]}},
                       "required": ["city", "unit"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "Time in a zone",
        "parameters": {"type": "object", "properties": {"zone": {"enum": ["utc", "cet"]}},
                       "required": ["zone"], "additionalProperties": False}}},
]


def tools_check(client, model, base, key, folder):
    """Tools against a server whose model has a real tool-capable chat template (Qwen2.5's):
    the prompt with tools (and a tool-call history) tokenizes exactly as transformers'
    `apply_chat_template(messages, tools=...)`; `tool_choice` required / named give calls the
    client parses, with arguments valid against their schemas; an auto reply in the Hermes
    format (steered by a grammar: the weights are random) is read back into a call, streamed too."""
    import os
    import jsonschema
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(folder)
    history = [
        {"role": "system", "content": "You help with weather."},
        {"role": "user", "content": "Weather in Oslo?"},
        # A 9-character id: Mistral's template refuses any other.
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "abcDEF123", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\", \"unit\": \"c\"}"}}]},
        {"role": "tool", "tool_call_id": "abcDEF123", "name": "get_weather", "content": "{\"temp\": -3}"},
    ]
    for msgs in ([{"role": "user", "content": "Weather in Oslo?"}], history):
        # transformers takes a call's arguments as a dict (what templates `tojson`), as vLLM passes them.
        hf_msgs = json.loads(json.dumps(msgs))
        for m in hf_msgs:
            for c in m.get("tool_calls") or []:
                c["function"]["arguments"] = json.loads(c["function"]["arguments"])
        want = hf.apply_chat_template(hf_msgs, tools=TOOLS, add_generation_prompt=True, tokenize=True)
        if hasattr(want, "keys"):  # a BatchEncoding in transformers 5
            want = want["input_ids"]
        req = urllib.request.Request(base + "/tokenize", method="POST",
                                     data=json.dumps({"messages": msgs, "tools": TOOLS}).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(req, timeout=60) as r:
            got = json.load(r)["tokens"]
        check(got == list(want), f"tools prompt differs from transformers: {len(got)} vs {len(want)} tokens")
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    msgs = [{"role": "user", "content": "Weather in Oslo?"}]
    n_calls = 0
    for seed in range(8):
        r = client.chat.completions.create(model=model, messages=msgs, tools=TOOLS, tool_choice="required",
                                           parallel_tool_calls=False, max_tokens=400, temperature=1.0, seed=seed)
        ch = r.choices[0]
        check(ch.finish_reason == "tool_calls" and ch.message.tool_calls, f"required: {ch}")
        for call in ch.message.tool_calls:
            jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
            n_calls += 1
    r = client.chat.completions.create(model=model, messages=msgs, tools=TOOLS, max_tokens=400, temperature=1.0,
                                       tool_choice={"type": "function", "function": {"name": "get_time"}})
    call = r.choices[0].message.tool_calls[0]
    check(call.function.name == "get_time", f"named: {call}")
    jsonschema.validate(json.loads(call.function.arguments), schemas["get_time"])
    if "<tool_call>" not in open(os.path.join(folder, "chat_template.jinja")).read():
        print(f"tools ({os.path.basename(folder.rstrip('/'))}): prompts = transformers' apply_chat_template(tools=...) "
              f"exactly (2 conversations); {n_calls} forced calls validate (jsonschema); named call parsed")
        return
    grammar = ('start: "<tool_call>\\n{\\"name\\": \\"get_weather\\", \\"arguments\\": {\\"city\\": \\"" '
               'CITY "\\", \\"unit\\": \\"c\\"}}\\n</tool_call>"\nCITY: /[A-Z][a-z]{1,10}/')
    r = client.chat.completions.create(model=model, messages=msgs, tools=TOOLS, max_tokens=400, temperature=1.0,
                                       seed=1, extra_body={"guided_grammar": grammar})
    ch = r.choices[0]
    check(ch.finish_reason == "tool_calls" and ch.message.tool_calls[0].function.name == "get_weather",
          f"auto (hermes): {ch}")
    args = json.loads(ch.message.tool_calls[0].function.arguments)
    jsonschema.validate(args, schemas["get_weather"])
    streamed = {}
    for chunk in client.chat.completions.create(model=model, messages=msgs, tools=TOOLS, max_tokens=400,
                                                temperature=1.0, seed=1, stream=True,
                                                extra_body={"guided_grammar": grammar}):
        for tc in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            d = streamed.setdefault(tc.index, {"name": "", "arguments": ""})
            d["name"] += tc.function.name or ""
            d["arguments"] += tc.function.arguments or ""
    check(streamed.get(0, {}).get("name") == "get_weather" and json.loads(streamed[0]["arguments"]) == args,
          f"streamed call {streamed}")
    print(f"tools: prompts = transformers' apply_chat_template(tools=...) exactly (2 conversations); "
          f"{n_calls} forced calls validate (jsonschema); named, auto (hermes) and streamed calls parsed by the client")


def read_safetensors(path):
    """The F32 tensors of a safetensors file, as (shape, flat list), without numpy."""
    import struct
    from array import array
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__" or t["dtype"] != "F32":
            continue
        a, b = t["data_offsets"]
        vals = array("f")
        vals.frombytes(raw[8 + n + a:8 + n + b])
        out[name] = (t["shape"], vals.tolist())
    return out


def log_softmax(row):
    import math
    m = max(row)
    lse = m + math.log(sum(math.exp(x - m) for x in row))
    return [x - lse for x in row]


def reference_check(client, model, folder):
    """Prompt (echo) and generated-token logprobs against transformers' `log_softmax` of the
    logits it computed for this fixture (reference.safetensors), within 1e-4."""
    import os
    ref = json.load(open(os.path.join(folder, "reference.json")))
    shape, flat = read_safetensors(os.path.join(folder, "reference.safetensors"))["logits"]
    n, v = shape
    ids = ref["input_ids"]
    want = [log_softmax(flat[j * v:(j + 1) * v]) for j in range(n)]
    c = client.completions.create(model=model, prompt=ids, max_tokens=1, temperature=0, logprobs=5,
                                  echo=True, extra_body={"ignore_eos": True})
    lp = c.choices[0].logprobs
    check(len(lp.token_logprobs) == n + 1, f"{len(lp.token_logprobs)} entries for {n} prompt tokens + 1")
    check(lp.token_logprobs[0] is None, "the first prompt token has no logprob")
    worst = 0.0
    for j in range(1, n + 1):
        row = want[j - 1]
        target = ids[j] if j < n else max(range(v), key=lambda t: row[t])
        worst = max(worst, abs(lp.token_logprobs[j] - row[target]))
        best5 = sorted(row, reverse=True)[:5]
        got = sorted(lp.top_logprobs[j].values(), reverse=True)
        # The top entry is transformers' most likely token's; every listed value is one of the
        # top six or the chosen token's (token strings of two ids may coincide).
        worst = max(worst, abs(got[0] - best5[0]))
        for g in got:
            check(min(abs(g - w) for w in best5 + [row[target]]) <= 1e-4,
                  f"position {j}: listed logprob {g} is none of transformers' top 5 {best5}")
    check(worst <= 1e-4, f"max |logprob - transformers log_softmax| = {worst:.2e} > 1e-4")
    print(f"logprobs vs transformers on {os.path.basename(folder.rstrip('/'))}: {n} prompt positions + 1 "
          f"generated, max |diff| {worst:.1e} (limit 1e-4)")


# --mixed-prompts: prompt lengths (in repetitions of a 4-token phrase) cycled over the requests,
# so long prompts arrive while other streams decode.
MIXED = [1, 8, 24, 64]
PROMPTS = {"mixed": False, "salt": ""}


def prompt_of(i):
    if PROMPTS["mixed"]:
        return f"{PROMPTS['salt']}Request {i}: " + "tell me more " * MIXED[i % len(MIXED)]
    return f"{PROMPTS['salt']}Load test request {i}: tell me a story."


async def one_stream(aclient, model, i, max_tokens):
    t0 = time.perf_counter()
    times = []
    usage = None
    finish = None
    stream = await aclient.completions.create(
        model=model, prompt=prompt_of(i), max_tokens=max_tokens,
        temperature=0.8, seed=i, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True})
    async for ch in stream:
        if ch.choices and ch.choices[0].finish_reason is None:
            times.append(time.perf_counter())
        if ch.choices and ch.choices[0].finish_reason:
            finish = ch.choices[0].finish_reason
        if ch.usage:
            usage = ch.usage
    return t0, times, usage, finish


async def run_concurrent(base, key, model, concurrency, total, max_tokens):
    aclient = openai.AsyncOpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=600)
    queue = list(range(total))
    results, errors = [], []

    async def worker():
        while queue:
            i = queue.pop()
            try:
                results.append(await one_stream(aclient, model, i, max_tokens))
            except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                errors.append(repr(e))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    await aclient.close()
    return results, errors, wall


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def load_test(base, key, model, n, max_tokens):
    results, errors, wall = asyncio.run(run_concurrent(base, key, model, n, n, max_tokens))
    check(not errors, f"{len(errors)} of {n} streams failed: {errors[:3]}")
    check(len(results) == n, f"{len(results)} results")
    for _, times, usage, finish in results:
        check(finish == "length" and usage is not None and usage.completion_tokens == max_tokens,
              f"stream ended with {finish}, usage {usage}")
        check(len(times) == max_tokens, f"{len(times)} token chunks, expected {max_tokens}")
    m = wait_blocks_zero(base)
    print(f"load test: {n} concurrent streams x {max_tokens} tokens, 0 failures, {wall:.1f} s; "
          f"KV blocks in use afterwards: {int(m['silica_kv_blocks_in_use'])} of {int(m['silica_kv_blocks_total'])}, "
          f"preemptions {int(m['silica_preemptions_total'])}")


def bench(base, key, model, levels, max_tokens):
    rows = []
    for c in levels:
        total = max(c, 4) * 2 if c > 1 else 4
        # A warm-up pass first (other prompts: nothing from it is in the prefix cache), so the
        # step shapes this load needs are compiled before anything is timed.
        PROMPTS["salt"] = "Warm-up. "
        asyncio.run(run_concurrent(base, key, model, c, total, max_tokens))
        PROMPTS["salt"] = ""
        results, errors, wall = asyncio.run(run_concurrent(base, key, model, c, total, max_tokens))
        check(not errors, f"bench at {c}: {errors[:3]}")
        toks = sum(u.completion_tokens for _, _, u, _ in results)
        itl = [b - a for _, t, _, _ in results for a, b in zip(t, t[1:])]
        ttft = [t[0] - t0 for t0, t, _, _ in results if t]
        row = {"concurrency": c, "requests": total, "output_tokens": toks, "wall_s": round(wall, 3),
               "output_tok_s": round(toks / wall, 1),
               "ttft_p50_ms": round(pct(ttft, 50) * 1e3, 1), "ttft_p99_ms": round(pct(ttft, 99) * 1e3, 1),
               "itl_p50_ms": round(pct(itl, 50) * 1e3, 2), "itl_p99_ms": round(pct(itl, 99) * 1e3, 2)}
        rows.append(row)
        print(json.dumps(row))
    m = wait_blocks_zero(base)
    print(f"bench done; KV blocks in use afterwards: {int(m['silica_kv_blocks_in_use'])}")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--api-key", default="none")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--bench", default="", help="comma-separated concurrencies to measure, e.g. 1,8,32")
    ap.add_argument("--bench-out", default="")
    ap.add_argument("--mixed-prompts", action="store_true",
                    help="bench with prompts of about 20 to 850 tokens (silica-tiny's byte-level tokenizer) cycled over the requests")
    ap.add_argument("--bench-only", action="store_true", help="skip the functional checks and the load test")
    ap.add_argument("--reference", default="",
                    help="a models/fixtures folder the server serves: only compare logprobs with its transformers reference")
    ap.add_argument("--tools", default="",
                    help="the model folder the server serves, with a tool-capable chat template: only check tools")
    a = ap.parse_args()
    base = a.base_url.rstrip("/")
    client = openai.OpenAI(base_url=base + "/v1", api_key=a.api_key, max_retries=0, timeout=600)
    if a.reference:
        reference_check(client, a.model, a.reference)
        return
    if a.tools:
        tools_check(client, a.model, base, a.api_key, a.tools)
        return
    PROMPTS["mixed"] = a.mixed_prompts
    if not a.bench_only:
        functional(client, a.model, base)
        load_test(base, a.api_key, a.model, a.concurrency, a.max_tokens)
    if a.bench:
        rows = bench(base, a.api_key, a.model, [int(x) for x in a.bench.split(",")], a.max_tokens)
        if a.bench_out:
            with open(a.bench_out, "w") as f:
                json.dump(rows, f, indent=1)
    print("serve_openai_check: all passed")


if __name__ == "__main__":
    main()
