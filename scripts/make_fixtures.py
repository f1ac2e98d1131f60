#!/usr/bin/env python3
"""Generate silica's outside-reference test fixtures with Hugging Face transformers.

Every case under models/fixtures/<case>/ is a real Hugging Face model folder (config.json,
safetensors weights, tokenizer.json, tokenizer_config.json, generation_config.json) with tiny
random weights and a tokenizer trained here on an inline corpus, plus the reference outputs that
transformers computes from it (reference.safetensors + reference.json).

Nothing is downloaded: weights are random (fixed seeds), tokenizers are trained locally.

Usage (normally through scripts/make_fixtures.sh, which pins the versions):
    python scripts/make_fixtures.py            # (re)generate every case, then verify
    python scripts/make_fixtures.py --verify   # only verify existing fixtures (fresh process)
    python scripts/make_fixtures.py --case llama3-tied
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import platform
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
import safetensors  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma2Config,
    Gemma3Config,
    Gemma3TextConfig,
    SiglipVisionConfig,
    GenerationConfig,
    GraniteConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    MixtralConfig,
    Qwen3MoeConfig,
    Qwen2MoeConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
    SmolLM3Config,
)

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "models" / "fixtures"

torch.set_num_threads(1)
transformers.utils.logging.disable_progress_bar()
torch.use_deterministic_algorithms(True)

GREEDY_NEW_TOKENS = 12
MIN_MARGIN = 1e-2  # top-1 minus top-2 logit at every greedy step (the contract needs > 1e-3)
# MoE fixtures: the smallest gap (in router logits, over every prompt token and routed layer)
# between the k-th and the (k+1)-th expert. bf16 compute perturbs router logits of magnitude ~10
# by up to ~0.2: the logits themselves are rounded to bf16 (ulp 0.0625 at 8-16, so a gap moves by
# up to one ulp) on top of the hidden state's own drift. Below this margin a token may route to
# another expert than in f32 (an O(1) jump at that logit; a first draw with a 0.19 gap did flip in
# silica's bf16 run), so seeds with such near-ties are redrawn.
ROUTER_MARGIN = 0.5
LOGITS_ATOL = 1e-4  # the tolerance contract, recorded in reference.json

# --------------------------------------------------------------------------------------------
# Training corpus for the tokenizers (written for this purpose; English with punctuation, digits,
# accented Latin, an emoji and some CJK so that multi-byte UTF-8 crosses token boundaries).
# --------------------------------------------------------------------------------------------
CORPUS = """\
The quick brown fox jumps over the lazy dog. The dog, who was not amused, went back to sleep.
On Monday, 3 March 2025, the small café on the corner opened at 7:30 and closed at 19:45.
Its owner, a naïve but cheerful baker, sold 128 croissants, 64 baguettes and 12 cakes.
"Why is the oven still hot?" she asked. "Because we baked 1,024 cookies today!" he replied.
A model reads text as tokens; a tokenizer turns text into numbers, and numbers back into text.
Inference is the part where the model predicts the next token, one token at a time, again and again.
The café's menu lists coffee (2.50), tea (1.75) and a crème brûlée for 4.20 -- prices in euros.
Some people write in other languages: 日本語 is Japanese, and 日本 means Japan. 東京 is Tokyo.
Emoji appear in chat messages too 🙂 and they are encoded as four bytes in UTF-8 🙂.
It's a test, isn't it? We'll see; they've said they'd check, and I'm sure you're right.
Rust is a systems programming language. It is fast, and it is safe. Memory safety matters.
The naïve approach computes attention over every pair of tokens; a cache keeps keys and values.
Numbers like 3.14159, 2.71828 and 1.41421 are famous. So is 42, the answer to everything.
Tabs\tand  double  spaces are whitespace, and so are new lines.
The end of the text is near. The café is closed now, and the fox and the dog are asleep.
"""


def corpus_lines():
    # Repeat so that frequent pieces get merged; the order is fixed, training is deterministic.
    lines = [ln for ln in CORPUS.splitlines() if ln.strip()]
    return lines * 4


# Texts whose tokenization is recorded for every case.
def tokenization_texts(specials):
    bos, eos = specials
    return [
        "Hello, world! The café serves naïve crème brûlée for $3.50.",
        "日本語のテキスト and emoji 🦀🙂 mixed together.",
        "",
        "   leading and trailing spaces   ",
        "line one\nline two\n\n\ttabbed\r\nwindows line",
        f"{bos}literal special tokens{eos} inside text",
        "Numbers: 1234567 and 3.14159, dated 2024-11-23.",
        "Don't WON'T I'm you're they'll we've he'd",
        "Rare symbols: Ωmega ß ∑ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ©",
        "cafe\u0301 (decomposed e + combining acute)",
        " ",
        "a",
    ]


# --------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
]

LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)

CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

LLAMA2_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = '<<SYS>>\\n' + messages[0]['content'] | trim + '\\n<</SYS>>\\n\\n' %}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}"
    "{%- set system_message = '' %}"
    "{%- set loop_messages = messages %}"
    "{%- endif %}"
    "{%- for message in loop_messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif %}"
    "{%- if loop.index0 == 0 %}{%- set content = system_message + message['content'] %}"
    "{%- else %}{%- set content = message['content'] %}{%- endif %}"
    "{%- if message['role'] == 'user' %}"
    "{{- bos_token + '[INST] ' + content | trim + ' [/INST]' }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- ' ' + content | trim + ' ' + eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
)

# Mistral [INST] style; the system prompt is folded into the next user turn (uses namespace()).
MISTRAL_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- set ns = namespace(system='') %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{%- set ns.system = message['content'] + '\\n\\n' %}"
    "{%- elif message['role'] == 'user' %}{{- '[INST] ' + ns.system + message['content'] + ' [/INST]' }}"
    "{%- set ns.system = '' %}"
    "{%- elif message['role'] == 'assistant' %}{{- message['content'] + eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
)

# TinyLlama-1.1B-Chat (Zephyr) style.
ZEPHYR_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{- '<|user|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{%- elif message['role'] == 'system' %}{{- '<|system|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{%- elif message['role'] == 'assistant' %}{{- '<|assistant|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{%- endif %}"
    "{%- if loop.last and add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- endif %}"
    "{%- endfor %}"
)

# Qwen3's template shape: ChatML, and with enable_thinking=False an empty think block opens the
# assistant turn (the switch Qwen3's published template has).
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

# Gemma 2/3: <start_of_turn>user / model turns, the system prompt folded into the first user turn
# (Gemma 3's published template does this; Gemma 2's refuses a system role).
GEMMA_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' %}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}"
    "{%- set first_user_prefix = '' %}"
    "{%- set loop_messages = messages %}"
    "{%- endif %}"
    "{%- for message in loop_messages %}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{- '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}"
)

# Granite 3.x's turn markers (written as plain text here: the tiny tokenizer has no such specials).
GRANITE_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|start_of_role|>' + message['role'] + '<|end_of_role|>' + message['content'] + '<|end_of_text|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_of_role|>assistant<|end_of_role|>' }}{%- endif %}"
)

CHAT_MESSAGES = [
    {"role": "system", "content": "You are a terse assistant. Answer in one line."},
    {"role": "user", "content": "What does the café on the corner sell? 🙂"},
]


def train_byte_level(pattern: str, n_regular: int, nfc: bool) -> Tokenizer:
    """Byte-level BPE like Llama-3 / Qwen2: regex Split + ByteLevel, all 256 bytes in the alphabet."""
    tok = Tokenizer(models.BPE())
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=n_regular,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(corpus_lines(), trainer=trainer)
    assert tok.get_vocab_size() == n_regular, (tok.get_vocab_size(), n_regular)
    return tok


def make_llama3_tokenizer(vocab_size: int, ignore_merges: bool = True) -> Tokenizer:
    n_reserved = 5  # extra reserved specials beyond the named ones
    n_special = len(LLAMA3_SPECIALS) + n_reserved
    n_regular = vocab_size - n_special
    tok = train_byte_level(LLAMA3_PATTERN, n_regular, nfc=False)
    # Rebuild the model with ignore_merges like the real Llama-3 tokenizer.json.
    spec = json.loads(tok.to_str())
    spec["model"]["ignore_merges"] = ignore_merges
    tok = Tokenizer.from_str(json.dumps(spec))
    specials = LLAMA3_SPECIALS + [f"<|reserved_special_token_{i}|>" for i in range(3, 3 + n_reserved)]
    tok.add_special_tokens([tokenizers.AddedToken(s, special=True, normalized=False) for s in specials])
    assert tok.get_vocab_size() == vocab_size
    bos = tok.token_to_id("<|begin_of_text|>")
    assert bos == n_regular  # specials follow the regular vocabulary, as in the real model
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<|begin_of_text|> $A",
                pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                special_tokens=[("<|begin_of_text|>", bos)],
            ),
        ]
    )
    return tok


def make_qwen2_tokenizer(n_regular: int) -> Tokenizer:
    tok = train_byte_level(QWEN2_PATTERN, n_regular, nfc=True)
    tok.add_special_tokens(
        [tokenizers.AddedToken(s, special=True, normalized=False) for s in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]]
    )
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def make_spm_tokenizer(n_pieces: int, style: str, limit_alphabet: int) -> Tokenizer:
    """SentencePiece-like BPE (Llama-2 / Mistral): '▁' for spaces, <0xNN> byte fallback, <unk> <s> </s>.

    style "legacy": normalizer Prepend('▁') + Replace(' ', '▁'), no pre-tokenizer (Llama-2-7b-hf).
    style "metaspace": Metaspace pre-tokenizer (prepend_scheme "first", split false), no normalizer.
    """
    # Train on words split at spaces (like sentencepiece's split_by_whitespace).
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    # Choose the character alphabet here, deterministically (most frequent first, ties by code point):
    # the trainer's own limit_alphabet breaks frequency ties in hash order. Characters left out of the
    # alphabet (capitals, CJK, most symbols) are encoded with <0xNN> byte-fallback tokens.
    counts = {}
    for line in corpus_lines():
        for ch in "▁" + line.replace(" ", "▁"):
            counts[ch] = counts.get(ch, 0) + 1
    alphabet = sorted(counts, key=lambda ch: (-counts[ch], ord(ch)))[:limit_alphabet]
    trainer = trainers.BpeTrainer(
        vocab_size=n_pieces,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        special_tokens=[],
    )
    trainer_tok.train_from_iterator(corpus_lines(), trainer=trainer)
    trained = json.loads(trainer_tok.to_str())["model"]
    pieces = sorted(trained["vocab"].items(), key=lambda kv: kv[1])
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = 3 + b
    for piece, _ in pieces:
        if piece not in vocab:
            vocab[piece] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    if style == "legacy":
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    elif style == "metaspace":
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    else:
        raise ValueError(style)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens([tokenizers.AddedToken(s, special=True, normalized=False) for s in ["<unk>", "<s>", "</s>"]])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B:1", special_tokens=[("<s>", 1)]
    )
    return tok


def save_tokenizer(tok: Tokenizer, folder: Path, *, bos, eos, unk=None, pad=None, chat_template: str,
                   model_max_length: int, merges_as_strings: bool = False) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        pad_token=pad,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = chat_template
    fast.save_pretrained(str(folder))
    if merges_as_strings:
        # The older tokenizer.json layout (as in the published Llama-3 files): merges as "a b" strings.
        tj_path = folder / "tokenizer.json"
        tj = json.loads(tj_path.read_text(encoding="utf-8"))
        tj["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in tj["model"]["merges"]]
        assert all(" " not in t for t in tj["model"]["vocab"])
        tj_path.write_text(json.dumps(tj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    # Keep the layout the brief asks for and older hub checkpoints use: the chat template inside
    # tokenizer_config.json, tokenizer_class loadable by transformers 4.x and 5.x, no extra files.
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    jinja = folder / "chat_template.jinja"
    if jinja.exists():
        jinja.unlink()
    cfg["chat_template"] = chat_template
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["bos_token"] = bos
    cfg["eos_token"] = eos
    cfg["unk_token"] = unk
    cfg["pad_token"] = pad
    cfg.pop("backend", None)
    write_json(cfg_path, cfg)
    for extra in ("special_tokens_map.json",):
        p = folder / extra
        if p.exists():
            p.unlink()
    return fast


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------
def common_model_kwargs(vocab_size, layers=2, heads=4, kv_heads=2, inter=128, max_pos=2048, eps=1e-5):
    return dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_pos,
        rms_norm_eps=eps,
        hidden_act="silu",
        initializer_range=0.02,
        attention_dropout=0.0,
        use_cache=True,
    )


CASES = {}


def case(fn):
    CASES[fn.__name__.replace("_", "-")] = fn
    return fn


@case
def llama3_tied():
    tok = make_llama3_tokenizer(400)
    ids = {s: tok.token_to_id(s) for s in LLAMA3_SPECIALS}
    cfg = LlamaConfig(
        **common_model_kwargs(400, max_pos=2048),
        bos_token_id=ids["<|begin_of_text|>"],
        eos_token_id=[ids["<|end_of_text|>"], ids["<|eom_id|>"], ids["<|eot_id|>"]],
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        head_dim=16,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 10000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 256,
        },
    )
    gen = dict(bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, do_sample=True, temperature=0.6, top_p=0.9)
    return dict(
        description="Llama-3.x style: GQA 4/2, llama3 rope scaling in transformers-5 `rope_parameters`, tied "
        "embeddings (no lm_head.weight stored), f32, single model.safetensors, byte-level BPE with "
        "<|begin_of_text|> added by the post-processor, list-valued eos_token_id.",
        features=["llama", "gqa", "rope:llama3", "config:rope_parameters", "tied", "f32", "single-file",
                  "tokenizer:byte-level-bpe", "bos:added", "eos:list", "ignore_merges"],
        config=cfg, tokenizer=tok, storage_dtype=torch.float32, hub_style=None, shard=None,
        tok_kwargs=dict(bos="<|begin_of_text|>", eos="<|eot_id|>", chat_template=LLAMA3_CHAT_TEMPLATE,
                        model_max_length=2048, merges_as_strings=True),
        generation=gen, specials=("<|begin_of_text|>", "<|eot_id|>"),
        prompt="The café opened at 7:30.",
        batch=["Numbers like 3.14159", "It's a test, isn't it? We'll see what the model says."],
    )


@case
def llama_hub_sharded_bf16():
    tok = make_llama3_tokenizer(400)
    ids = {s: tok.token_to_id(s) for s in LLAMA3_SPECIALS}
    cfg = LlamaConfig(
        **common_model_kwargs(400, max_pos=4096),
        bos_token_id=ids["<|begin_of_text|>"],
        eos_token_id=ids["<|end_of_text|>"],
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        head_dim=16,
        pretraining_tp=1,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 128,
        },
    )
    hub = {
        "rope_theta": 500000.0,
        "rope_scaling": {
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 128,
            "rope_type": "llama3",
        },
    }
    return dict(
        description="Llama-3.2 hub style config.json (top-level rope_theta + rope_scaling {rope_type: llama3}, "
        "torch_dtype), untied embeddings, weights stored in bf16 and sharded into several files with "
        "model.safetensors.index.json.",
        features=["llama", "gqa", "rope:llama3", "config:hub-rope_scaling", "untied", "bf16", "sharded",
                  "tokenizer:byte-level-bpe", "bos:added"],
        config=cfg, tokenizer=tok, storage_dtype=torch.bfloat16, hub_style=hub, shard="60KB",
        tok_kwargs=dict(bos="<|begin_of_text|>", eos="<|end_of_text|>", chat_template=LLAMA3_CHAT_TEMPLATE,
                        model_max_length=4096, merges_as_strings=True),
        generation=dict(bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id),
        specials=("<|begin_of_text|>", "<|end_of_text|>"),
        prompt="Rust is fast and safe.",
        batch=["Tabs\tand  double  spaces", "The naïve approach computes attention over every pair."],
    )


@case
def llama2_mha_linear():
    tok = make_spm_tokenizer(n_pieces=220, style="legacy", limit_alphabet=60)
    vocab = tok.get_vocab_size()
    cfg = LlamaConfig(
        **common_model_kwargs(vocab, heads=4, kv_heads=4, max_pos=4096),
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
        tie_word_embeddings=False,
        attention_bias=False,
        pretraining_tp=1,
        rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
    )
    # Oldest hub style: no rope_theta key (implicit 10000.0) and rope_scaling with the legacy "type" key
    # (as in Llama-2 long-context fine-tunes such as vicuna-7b-v1.5-16k).
    hub = {"rope_scaling": {"factor": 2.0, "type": "linear"}}
    return dict(
        description="Llama-2 style: MHA (kv heads == heads), linear rope scaling (factor 2) written in the "
        "legacy hub form rope_scaling {type: linear} with no rope_theta key, untied, f32, SentencePiece-like "
        "BPE (legacy normalizer Prepend+Replace '▁', byte fallback <0x00>..<0xFF>, <unk>/<s>/</s>, BOS <s>).",
        features=["llama", "mha", "rope:linear", "config:hub-legacy-type-key", "untied", "f32", "single-file",
                  "tokenizer:spm-bpe-legacy", "byte_fallback", "bos:added"],
        config=cfg, tokenizer=tok, storage_dtype=torch.float32, hub_style=hub, shard=None,
        # Llama-2-7b-hf's config.json has none of these keys; transformers' defaults apply.
        drop_keys=["rope_theta", "head_dim", "mlp_bias", "attention_bias", "attention_dropout"],
        tok_kwargs=dict(bos="<s>", eos="</s>", unk="<unk>", chat_template=LLAMA2_CHAT_TEMPLATE,
                        model_max_length=4096),
        generation=dict(bos_token_id=1, eos_token_id=2, pad_token_id=0),
        specials=("<s>", "</s>"),
        prompt="Numbers like 42 are famous.",
        batch=["Hello there", "A model reads text as tokens and predicts the next one."],
    )


@case
def mistral_headdim_f16():
    tok = make_spm_tokenizer(n_pieces=240, style="metaspace", limit_alphabet=64)
    vocab = tok.get_vocab_size()
    cfg = MistralConfig(
        **common_model_kwargs(vocab, heads=4, kv_heads=2, max_pos=32, eps=1e-5),
        head_dim=32,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        sliding_window=None,
        rope_parameters={"rope_type": "dynamic", "rope_theta": 1000000.0, "factor": 2.0},
    )
    return dict(
        description="Mistral: GQA 4/2 with explicit head_dim 32 != hidden/heads (16), so q_proj is [128, 64] and "
        "o_proj [64, 128]; dynamic NTK rope (factor 2, max_position_embeddings 32) in rope_parameters; weights "
        "stored in f16; no sliding window; SentencePiece-like BPE with a Metaspace pre-tokenizer and byte "
        "fallback. Greedy prompt+generation stays below 32 positions; `long_logits` covers 48 positions "
        "(> max_position_embeddings) where the dynamic base is rescaled for the whole sequence.",
        features=["mistral", "gqa", "head_dim", "rope:dynamic", "config:rope_parameters", "untied", "f16",
                  "single-file", "tokenizer:spm-bpe-metaspace", "byte_fallback", "bos:added", "long-context"],
        config=cfg, tokenizer=tok, storage_dtype=torch.float16, hub_style=None, shard=None,
        tok_kwargs=dict(bos="<s>", eos="</s>", unk="<unk>", chat_template=MISTRAL_CHAT_TEMPLATE,
                        model_max_length=32),
        generation=dict(bos_token_id=1, eos_token_id=2),
        specials=("<s>", "</s>"),
        prompt="Memory safety matters.",
        long_text=(CORPUS.replace("\n", " ")),
        long_len=48,
        batch=["Emoji 🙂", "The end of the text is near, and the café is closed now."],
    )


@case
def qwen2_bias_tied():
    tok = make_qwen2_tokenizer(n_regular=380)
    n = tok.get_vocab_size()
    vocab = 416  # padded beyond the tokenizer (like Qwen's 151936 > 151665): logits have unused rows
    assert vocab >= n
    eot = tok.token_to_id("<|endoftext|>")
    im_end = tok.token_to_id("<|im_end|>")
    cfg = Qwen2Config(
        **common_model_kwargs(vocab, heads=4, kv_heads=2, max_pos=1024, eps=1e-6),
        bos_token_id=eot,
        eos_token_id=im_end,
        tie_word_embeddings=True,
        use_sliding_window=False,
        sliding_window=None,
        max_window_layers=2,
        rope_parameters={"rope_type": "yarn", "rope_theta": 1000000.0, "factor": 4.0,
                         "original_max_position_embeddings": 256},
    )
    # Hub style as Qwen2.5's docs tell users to add it: rope_theta + rope_scaling {type: yarn, ...}.
    hub = {"rope_theta": 1000000.0,
           "rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 256, "type": "yarn"}}
    return dict(
        description="Qwen2: q/k/v projections with bias (o_proj without), tied embeddings, rope_theta 1e6 with "
        "YaRN scaling (factor 4, original_max_position_embeddings 256, attention factor 0.1*ln(4)+1 applied "
        "to cos/sin) in hub style rope_scaling {type: yarn}; config vocab 416 > tokenizer 383 (padding rows); "
        "byte-level BPE with NFC normalizer and Qwen2's digit-by-digit regex, no BOS; ChatML template.",
        features=["qwen2", "qkv-bias", "gqa", "rope:yarn", "config:hub-rope_scaling", "tied", "f32",
                  "single-file", "tokenizer:byte-level-bpe", "normalizer:nfc", "bos:none", "vocab-padded",
                  "chatml"],
        config=cfg, tokenizer=tok, storage_dtype=torch.float32, hub_style=hub, shard=None,
        drop_keys=["layer_types"],  # absent from published Qwen2.5 configs
        tok_kwargs=dict(bos=None, eos="<|im_end|>", pad="<|endoftext|>", chat_template=CHATML_TEMPLATE,
                        model_max_length=1024),
        generation=dict(bos_token_id=eot, eos_token_id=[im_end, eot], pad_token_id=eot),
        specials=("<|im_start|>", "<|im_end|>"),
        prompt="The café opened at 7:30.",
        batch=["日本語", "Inference predicts the next token, one token at a time."],
    )


@case
def llama_default_rope_mha():
    tok = make_spm_tokenizer(n_pieces=200, style="metaspace", limit_alphabet=56)
    vocab = tok.get_vocab_size()
    cfg = LlamaConfig(
        **common_model_kwargs(vocab, layers=3, heads=4, kv_heads=4, inter=96, max_pos=2048, eps=1e-6),
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        attention_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    return dict(
        description="Plain Llama with default rope (theta 1e4) in rope_parameters, MHA, 3 layers, "
        "intermediate 96, rms_norm_eps 1e-6, untied, f32; SentencePiece-like BPE (Metaspace) with a "
        "TinyLlama/Zephyr chat template.",
        features=["llama", "mha", "rope:default", "config:rope_parameters", "untied", "f32", "single-file",
                  "3-layers", "tokenizer:spm-bpe-metaspace", "byte_fallback", "bos:added"],
        config=cfg, tokenizer=tok, storage_dtype=torch.float32, hub_style=None, shard=None,
        tok_kwargs=dict(bos="<s>", eos="</s>", unk="<unk>", chat_template=ZEPHYR_CHAT_TEMPLATE,
                        model_max_length=2048),
        generation=dict(bos_token_id=1, eos_token_id=2, max_length=2048),
        specials=("<s>", "</s>"),
        prompt="The café sells tea.",
        batch=["The dog", "So is 42, the answer to everything; tea costs 1.75."],
    )


@case
def qwen2_sliding_window():
    tok = make_qwen2_tokenizer(n_regular=380)
    eot = tok.token_to_id("<|endoftext|>")
    im_end = tok.token_to_id("<|im_end|>")
    cfg = Qwen2Config(
        **common_model_kwargs(tok.get_vocab_size(), layers=3, heads=4, kv_heads=2, max_pos=512, eps=1e-6),
        bos_token_id=eot,
        eos_token_id=im_end,
        tie_word_embeddings=False,
        use_sliding_window=True,
        sliding_window=4,
        max_window_layers=1,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    # Published Qwen2.5 configs carry no layer_types: the window layers come from max_window_layers.
    hub = {"rope_theta": 10000.0}
    return dict(
        description="Qwen2 with use_sliding_window: window 4 on the layers from max_window_layers = 1 on "
        "(layer 0 attends fully, layers 1 and 2 through the window), no layer_types in config.json; "
        "prompts of 8-16 tokens, all longer than the window; untied, f32.",
        features=["qwen2", "sliding-window", "max_window_layers", "prompt>window", "qkv-bias", "gqa",
                  "rope:default", "config:hub-rope_theta", "untied", "f32", "3-layers", "chatml"],
        config=cfg, tokenizer=tok, storage_dtype=torch.float32, hub_style=hub, shard=None,
        drop_keys=["layer_types"],
        tok_kwargs=dict(bos=None, eos="<|im_end|>", pad="<|endoftext|>", chat_template=CHATML_TEMPLATE,
                        model_max_length=512),
        generation=dict(bos_token_id=eot, eos_token_id=[im_end, eot], pad_token_id=eot),
        specials=("<|im_start|>", "<|im_end|>"),
        prompt="The café opened at 7:30.",
        batch=["日本語 is Japanese", "Inference predicts the next token, one token at a time, again."],
    )


@case
def llama_attn_mlp_bias():
    tok = make_spm_tokenizer(n_pieces=200, style="metaspace", limit_alphabet=56)
    cfg = LlamaConfig(
        **common_model_kwargs(tok.get_vocab_size(), heads=4, kv_heads=2, max_pos=2048, eps=1e-6),
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        attention_bias=True,
        mlp_bias=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    return dict(
        description="Llama with attention_bias (biases on q, k, v and o) and mlp_bias (gate, up, down), "
        "GQA 4/2, untied, f32.",
        features=["llama", "attention_bias", "mlp_bias", "gqa", "rope:default", "config:rope_parameters",
                  "untied", "f32", "tokenizer:spm-bpe-metaspace", "bos:added"],
        config=cfg, tokenizer=tok, storage_dtype=torch.float32, hub_style=None, shard=None,
        tok_kwargs=dict(bos="<s>", eos="</s>", unk="<unk>", chat_template=ZEPHYR_CHAT_TEMPLATE,
                        model_max_length=2048),
        generation=dict(bos_token_id=1, eos_token_id=2),
        specials=("<s>", "</s>"),
        prompt="The café sells tea and coffee.",
        batch=["The dog", "So is 42, the answer to everything; tea costs 1.75."],
    )


@case
def qwen3_qk_norm():
    tok = make_qwen2_tokenizer(n_regular=380)
    n = tok.get_vocab_size()
    eot = tok.token_to_id("<|endoftext|>")
    im_end = tok.token_to_id("<|im_end|>")
    cfg = Qwen3Config(
        **common_model_kwargs(n, layers=3, heads=4, kv_heads=2, max_pos=1024, eps=1e-6),
        head_dim=32,
        bos_token_id=eot,
        eos_token_id=im_end,
        tie_word_embeddings=True,
        attention_bias=False,
        use_sliding_window=True,
        sliding_window=5,
        max_window_layers=2,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    )
    return dict(
        description="Qwen3: RMSNorm over each head of q and k (q_norm, k_norm [head_dim]) before the rope, "
        "head_dim 32 != hidden/heads (16), no biases, tied embeddings, rope_theta 1e6; sliding window 5 on "
        "layer 2 only, as the `layer_types` list transformers 5 writes says (max_window_layers 2); ChatML "
        "template with Qwen3's enable_thinking switch.",
        features=["qwen3", "qk-norm", "head_dim", "gqa", "layer_types", "sliding-window", "prompt>window",
                  "rope:default", "config:rope_parameters", "tied", "f32", "3-layers",
                  "tokenizer:byte-level-bpe", "bos:none", "chatml", "enable_thinking"],
        config=cfg, tokenizer=tok, storage_dtype=torch.float32, hub_style=None, shard=None,
        tok_kwargs=dict(bos=None, eos="<|im_end|>", pad="<|endoftext|>", chat_template=QWEN3_CHAT_TEMPLATE,
                        model_max_length=1024),
        generation=dict(bos_token_id=eot, eos_token_id=[im_end, eot], pad_token_id=eot),
        specials=("<|im_start|>", "<|im_end|>"),
        prompt="Rust is fast and safe.",
        batch=["Emoji 🙂", "A tokenizer turns text into numbers, and numbers back into text."],
    )


def make_gemma_tokenizer() -> Tokenizer:
    tok = make_spm_tokenizer(n_pieces=230, style="metaspace", limit_alphabet=60)
    tok.add_special_tokens([tokenizers.AddedToken(s, special=True, normalized=False)
                            for s in ["<pad>", "<start_of_turn>", "<end_of_turn>"]])
    return tok


def gemma_files(tok: Tokenizer, model_max_length: int) -> dict:
    """What the Gemma cases share: the tokenizer files' specials and chat template, eos [</s>,
    <end_of_turn>] as Gemma's generation_config lists them."""
    end_turn = tok.token_to_id("<end_of_turn>")
    return dict(
        tok_kwargs=dict(bos="<s>", eos="</s>", unk="<unk>", pad="<pad>", chat_template=GEMMA_CHAT_TEMPLATE,
                        model_max_length=model_max_length),
        generation=dict(bos_token_id=1, eos_token_id=[2, end_turn], pad_token_id=tok.token_to_id("<pad>")),
        specials=("<start_of_turn>", "<end_of_turn>"),
    )


@case
def gemma2_softcap():
    tok = make_gemma_tokenizer()
    end_turn = tok.token_to_id("<end_of_turn>")
    cfg = Gemma2Config(
        vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
        rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh", attention_dropout=0.0,
        query_pre_attn_scalar=24, sliding_window=4, attn_logit_softcapping=2.0, final_logit_softcapping=6.0,
        bos_token_id=1, eos_token_id=[2, end_turn], pad_token_id=tok.token_to_id("<pad>"),
        tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    # Hub style as Gemma 2's published config.json: rope_theta at the top, no layer_types (every even
    # layer local by default).
    hub = {"rope_theta": 10000.0}
    return dict(
        description="Gemma 2: embedding x sqrt(hidden), RMSNorm x(1+w), norms after attention and around the "
        "MLP, GELU-tanh, q.k scaled by query_pre_attn_scalar 24^-0.5 (not head_dim 32), attention-logit "
        "soft-cap 2 and final-logit soft-cap 6 (small, so tanh bends the tiny model's values), local layers "
        "0 and 2 with window 4 alternating with global layer 1 (no layer_types in config.json), untied (a "
        "tied tiny random Gemma repeats its input: the embedding, scaled by 8, dominates the residual); "
        "SentencePiece-like BPE with <start_of_turn>/<end_of_turn> and Gemma's chat template.",
        features=["gemma2", "embed-scale", "norm:1+w", "sandwich-norms", "gelu-tanh", "query_pre_attn_scalar",
                  "attn-softcap", "final-softcap", "sliding-window", "alternating-layers", "prompt>window",
                  "head_dim", "gqa", "untied", "f32", "3-layers", "config:hub-rope_theta",
                  "tokenizer:spm-bpe-metaspace", "bos:added", "gemma-chat"],
        config=cfg, tokenizer=tok, storage_dtype=torch.float32, hub_style=hub, shard=None,
        drop_keys=["layer_types"],
        **gemma_files(tok, model_max_length=1024),
        prompt="The café sells tea and coffee.",
        batch=["The dog", "Memory safety matters, and so does speed."],
    )


@case
def gemma3_text_local_rope():
    tok = make_gemma_tokenizer()
    end_turn = tok.token_to_id("<end_of_turn>")
    cfg = Gemma3TextConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=2048,
        rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh", attention_dropout=0.0,
        query_pre_attn_scalar=20, sliding_window=3, sliding_window_pattern=2,
        bos_token_id=1, eos_token_id=[2, end_turn], pad_token_id=tok.token_to_id("<pad>"),
        tie_word_embeddings=False,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "rope_theta": 1000000.0, "factor": 2.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
    )
    # Hub style as Gemma 3's published config.json: rope_theta + rope_scaling for the global layers,
    # rope_local_base_freq for the local ones, sliding_window_pattern instead of layer_types.
    hub = {"rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
           "rope_scaling": {"rope_type": "linear", "factor": 2.0}, "sliding_window_pattern": 2}
    return dict(
        description="Gemma 3 text model: Gemma 2's decoder plus RMSNorm x(1+w) over each head of q and k, no "
        "soft-caps, local layers 0 and 2 (window 3, rope base rope_local_base_freq 1e4) and global layers "
        "1 and 3 (rope_theta 1e6 with linear scaling x2), from sliding_window_pattern 2 in hub-style "
        "config.json; query_pre_attn_scalar 20; untied (tied tiny random Gemmas repeat one token).",
        features=["gemma3_text", "qk-norm", "norm:1+w", "sandwich-norms", "gelu-tanh", "embed-scale",
                  "local-rope", "rope:linear", "sliding-window", "sliding_window_pattern", "prompt>window",
                  "query_pre_attn_scalar", "head_dim", "gqa", "untied", "f32", "4-layers",
                  "config:hub-rope_scaling", "tokenizer:spm-bpe-metaspace", "bos:added", "gemma-chat"],
        config=cfg, tokenizer=tok, storage_dtype=torch.float32, hub_style=hub, shard=None,
        drop_keys=["layer_types"],
        **gemma_files(tok, model_max_length=2048),
        prompt="Numbers like 42 are famous.",
        batch=["Hello there", "The naïve approach computes attention over every pair of tokens."],
    )


def gemma3_hub_multimodal_config(saved: dict, text_keys: list[str]) -> dict:
    """The config.json of a Gemma 3 4B-27B style checkpoint as the hub publishes it (transformers
    4.50): the wrapper's own keys and a text_config listing only what differs from Gemma3TextConfig's
    defaults (`text_keys`, plus rope_scaling for the global layers); every other key falls back to
    the class defaults on load (the hub's 4B text_config has no vocab_size, head counts, rope_theta)."""
    text = saved["text_config"]
    hub_text = {k: text[k] for k in text_keys}
    full = text["rope_parameters"]["full_attention"]
    if full.get("rope_type", "default") != "default":
        hub_text["rope_scaling"] = {k: v for k, v in full.items() if k != "rope_theta"}
    hub_text["model_type"] = "gemma3_text"
    out = {k: saved[k] for k in ("architectures", "boi_token_index", "eoi_token_index", "eos_token_id",
                                 "image_token_index", "initializer_range", "mm_tokens_per_image", "model_type",
                                 "tie_word_embeddings", "transformers_version")}
    out["text_config"] = dict(sorted(hub_text.items()))
    out["torch_dtype"] = saved["dtype"]
    vision = saved["vision_config"]
    out["vision_config"] = {k: vision[k] for k in ("hidden_size", "image_size", "intermediate_size", "model_type",
                                                  "num_attention_heads", "num_hidden_layers", "patch_size",
                                                  "vision_use_head")}
    return dict(sorted(out.items()))


@case
def gemma3_multimodal_text():
    tok = make_gemma_tokenizer()
    end_turn = tok.token_to_id("<end_of_turn>")
    vocab = tok.get_vocab_size()
    text = Gemma3TextConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        # heads 8 / kv 4, rope bases 1e6 / 1e4, eps 1e-6, max_position_embeddings: the class defaults,
        # left out of config.json as the hub's 4B config leaves them.
        head_dim=16, query_pre_attn_scalar=20, sliding_window=3, sliding_window_pattern=2,
        hidden_activation="gelu_pytorch_tanh", attention_dropout=0.0,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "rope_theta": 1000000.0, "factor": 2.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
    )
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=28, patch_size=14, vision_use_head=False)
    cfg = Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=4,
        # Image placeholders outside the text vocabulary: no prompt token is one.
        image_token_index=vocab, boi_token_index=vocab + 1, eoi_token_index=vocab + 2,
        eos_token_id=[2, end_turn], tie_word_embeddings=False,
    )
    return dict(
        description="Gemma 3 4B-27B's published form: Gemma3ForConditionalGeneration (model_type gemma3) whose "
        "text model sits under text_config beside a SigLIP vision tower and projector; hub-style config.json "
        "(transformers 4.50) whose text_config lists only what differs from Gemma3TextConfig (heads 8/4, rope "
        "bases, eps, context at their class defaults) and hub-layout weights (language_model.model.*, "
        "language_model.lm_head, vision_tower.*, multi_modal_projector.*) in bf16. The reference is the text "
        "model's logits for text prompts (no image); silica runs the text model and does not load the vision "
        "tower. Untied by the wrapper's tie_word_embeddings false (transformers 5 ties by it).",
        features=["gemma3", "multimodal:text-model", "text_config", "class-defaults", "hub-weight-layout",
                  "vision-tower-not-loaded", "qk-norm", "norm:1+w", "sandwich-norms", "gelu-tanh", "embed-scale",
                  "local-rope", "rope:linear", "sliding-window", "sliding_window_pattern", "prompt>window",
                  "query_pre_attn_scalar", "head_dim", "gqa", "untied", "bf16", "4-layers",
                  "config:hub-rope_scaling", "tokenizer:spm-bpe-metaspace", "bos:added", "gemma-chat"],
        config=cfg, tokenizer=tok, storage_dtype=torch.bfloat16, hub_style=None, shard=None,
        rewrite=lambda saved: gemma3_hub_multimodal_config(
            saved, ["head_dim", "hidden_size", "intermediate_size", "num_hidden_layers", "query_pre_attn_scalar",
                    "sliding_window", "sliding_window_pattern", "vocab_size"]),
        **gemma_files(tok, model_max_length=2048),
        prompt="Numbers like 42 are famous.",
        batch=["Hello there", "The naïve approach computes attention over every pair of tokens."],
    )


@case
def granite_multipliers():
    tok = make_llama3_tokenizer(400)
    ids = {s: tok.token_to_id(s) for s in LLAMA3_SPECIALS}
    cfg = GraniteConfig(
        **common_model_kwargs(400, max_pos=4096, eps=1e-5),
        bos_token_id=ids["<|begin_of_text|>"],
        eos_token_id=ids["<|end_of_text|>"],
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        embedding_multiplier=6.0,
        attention_multiplier=0.15,
        residual_multiplier=0.4,
        logits_scaling=3.0,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    return dict(
        description="Granite 3.x: embedding x embedding_multiplier 6, q.k x attention_multiplier 0.15 (not "
        "1/sqrt(16)), each block's output x residual_multiplier 0.4, logits / logits_scaling 3; GQA 4/2, untied "
        "(tied, the scaled embedding dominates a tiny random model and greedy repeats one token), f32, "
        "byte-level BPE.",
        features=["granite", "embedding_multiplier", "attention_multiplier", "residual_multiplier",
                  "logits_scaling", "gqa", "rope:default", "config:rope_parameters", "untied", "f32",
                  "tokenizer:byte-level-bpe", "bos:added"],
        config=cfg, tokenizer=tok, storage_dtype=torch.float32, hub_style=None, shard=None,
        tok_kwargs=dict(bos="<|begin_of_text|>", eos="<|end_of_text|>", chat_template=GRANITE_CHAT_TEMPLATE,
                        model_max_length=4096),
        generation=dict(bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id),
        specials=("<|begin_of_text|>", "<|end_of_text|>"),
        prompt="The café opened at 7:30.",
        batch=["Numbers like 3.14159", "It's a test, isn't it? We'll see what the model says."],
    )


@case
def smollm3_nope_layers():
    tok = make_qwen2_tokenizer(n_regular=380)
    eot = tok.token_to_id("<|endoftext|>")
    im_end = tok.token_to_id("<|im_end|>")
    cfg = SmolLM3Config(
        **common_model_kwargs(tok.get_vocab_size(), layers=4, heads=4, kv_heads=2, max_pos=1024, eps=1e-6),
        bos_token_id=None,
        eos_token_id=im_end,
        pad_token_id=eot,
        tie_word_embeddings=True,
        no_rope_layer_interval=2,
        use_sliding_window=True,
        sliding_window=4,
        rope_parameters={"rope_type": "default", "rope_theta": 50000.0},
    )
    return dict(
        description="SmolLM3: layers 1 and 3 without rotary embedding (NoPE; no_rope_layer_interval 2, "
        "no_rope_layers [1, 0, 1, 0] in config.json), and with use_sliding_window those NoPE layers attend "
        "through a 4-token window (layer_types as transformers derives them); tied, f32, ChatML.",
        features=["smollm3", "nope-layers", "no_rope_layers", "sliding-window", "prompt>window", "layer_types",
                  "gqa", "rope:default", "tied", "f32", "4-layers", "tokenizer:byte-level-bpe", "bos:none",
                  "chatml"],
        config=cfg, tokenizer=tok, storage_dtype=torch.float32, hub_style=None, shard=None,
        tok_kwargs=dict(bos=None, eos="<|im_end|>", pad="<|endoftext|>", chat_template=CHATML_TEMPLATE,
                        model_max_length=1024),
        generation=dict(eos_token_id=[im_end, eot], pad_token_id=eot),
        specials=("<|im_start|>", "<|im_end|>"),
        prompt="The café opened at 7:30.",
        batch=["Emoji 🙂", "A tokenizer turns text into numbers, and numbers back into text."],
    )


@case
def phi3_fused_longrope():
    tok = make_spm_tokenizer(n_pieces=220, style="legacy", limit_alphabet=60)
    vocab = tok.get_vocab_size()
    half = 16 // 2
    cfg = Phi3Config(
        **{k: v for k, v in common_model_kwargs(vocab, heads=4, kv_heads=2, max_pos=128, eps=1e-5).items()
           if k != "max_position_embeddings"},
        max_position_embeddings=128,
        original_max_position_embeddings=32,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
        sliding_window=None,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                         "short_factor": [1.0 + 0.15 * i for i in range(half)],
                         "long_factor": [1.0 + 1.1 * i for i in range(half)],
                         "original_max_position_embeddings": 32},
    )
    # Hub style as Phi-3.5-mini's config.json: rope_scaling {type: longrope, short/long_factor} and
    # original_max_position_embeddings at the top level.
    hub = {"rope_theta": 10000.0, "original_max_position_embeddings": 32,
           "rope_scaling": {"type": "longrope", "short_factor": [1.0 + 0.15 * i for i in range(half)],
                            "long_factor": [1.0 + 1.1 * i for i in range(half)]}}
    return dict(
        description="Phi-3: q/k/v fused into qkv_proj [q+2kv, h] and gate/up into gate_up_proj [2i, h]; LongRoPE "
        "(hub: rope_scaling {type: longrope}) with short factors up to original_max_position_embeddings 32 and "
        "long factors past it, attention factor sqrt(1 + ln(128/32) / ln 32) on cos/sin; GQA 4/2, untied, f32; "
        "`long_logits` covers 48 positions (> 32: the long factors for the whole sequence).",
        features=["phi3", "fused-qkv", "fused-gate-up", "rope:longrope", "config:hub-rope_scaling", "gqa",
                  "untied", "f32", "long-context", "tokenizer:spm-bpe-legacy", "bos:added"],
        config=cfg, tokenizer=tok, storage_dtype=torch.float32, hub_style=hub, shard=None,
        tok_kwargs=dict(bos="<s>", eos="</s>", unk="<unk>", chat_template=ZEPHYR_CHAT_TEMPLATE,
                        model_max_length=128),
        generation=dict(bos_token_id=1, eos_token_id=2, pad_token_id=0),
        specials=("<s>", "</s>"),
        prompt="Numbers like 42 are famous.",
        long_text=(CORPUS.replace("\n", " ")),
        long_len=48,
        batch=["Hello there", "A model reads text as tokens and predicts the next one."],
    )


@case
def mixtral_moe():
    tok = make_spm_tokenizer(n_pieces=220, style="legacy", limit_alphabet=60)
    cfg = MixtralConfig(
        **common_model_kwargs(tok.get_vocab_size(), layers=2, heads=4, kv_heads=2, inter=48, max_pos=1024,
                              eps=1e-5),
        num_local_experts=4,
        num_experts_per_tok=2,
        router_jitter_noise=0.0,
        sliding_window=6,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    )
    hub = {"rope_theta": 1000000.0}
    return dict(
        description="Mixtral: every layer's MLP a mixture of 4 SwiGLU experts (block_sparse_moe.experts.{e}.w1/w3/w2, "
        "stored per expert as on the hub), a router picking the top 2 per token from its softmax and renormalising "
        "them; sliding window 6 on every layer (shorter than the prompt); GQA 4/2, untied, f32, hub-style "
        "rope_theta.",
        features=["mixtral", "moe", "top-k", "renormalize", "experts-per-tensor", "sliding-window",
                  "prompt>window", "gqa", "rope:default", "config:hub-rope_theta", "untied", "f32",
                  "tokenizer:spm-bpe-legacy", "bos:added"],
        config=cfg, tokenizer=tok, storage_dtype=torch.float32, hub_style=hub, shard=None,
        tok_kwargs=dict(bos="<s>", eos="</s>", unk="<unk>", chat_template=ZEPHYR_CHAT_TEMPLATE,
                        model_max_length=1024),
        generation=dict(bos_token_id=1, eos_token_id=2, pad_token_id=0),
        specials=("<s>", "</s>"),
        prompt="Numbers like 42 are famous.",
        batch=["Hello there", "A model reads text as tokens and predicts the next one."],
    )


@case
def qwen3_moe():
    tok = make_qwen2_tokenizer(n_regular=380)
    n = tok.get_vocab_size()
    eot = tok.token_to_id("<|endoftext|>")
    im_end = tok.token_to_id("<|im_end|>")
    cfg = Qwen3MoeConfig(
        **common_model_kwargs(n, layers=3, heads=4, kv_heads=2, inter=96, max_pos=1024, eps=1e-6),
        head_dim=16,
        num_experts=8,
        num_experts_per_tok=3,
        moe_intermediate_size=24,
        norm_topk_prob=False,
        decoder_sparse_step=1,
        mlp_only_layers=[1],
        bos_token_id=eot,
        eos_token_id=im_end,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    )
    return dict(
        description="Qwen3-MoE: q/k norms; layers 0 and 2 route each token to 3 of 8 experts "
        "(moe_intermediate_size 24, mlp.experts.{e}.gate_proj/up_proj/down_proj) weighted by their softmax "
        "probabilities *without* renormalising (norm_topk_prob false); layer 1 is dense (mlp_only_layers [1], "
        "intermediate_size 96); GQA 4/2, untied, f32, ChatML with Qwen3's enable_thinking switch.",
        features=["qwen3_moe", "moe", "top-k", "no-renormalize", "mlp_only_layers", "dense+moe-layers",
                  "experts-per-tensor", "qk-norm", "gqa", "rope:default", "config:rope_parameters", "untied",
                  "f32", "3-layers", "tokenizer:byte-level-bpe", "bos:none", "chatml", "enable_thinking"],
        config=cfg, tokenizer=tok, storage_dtype=torch.float32, hub_style=None, shard=None,
        tok_kwargs=dict(bos=None, eos="<|im_end|>", pad="<|endoftext|>", chat_template=QWEN3_CHAT_TEMPLATE,
                        model_max_length=1024),
        generation=dict(bos_token_id=eot, eos_token_id=[im_end, eot], pad_token_id=eot),
        specials=("<|im_start|>", "<|im_end|>"),
        prompt="Rust is fast and safe.",
        batch=["Emoji 🙂", "A tokenizer turns text into numbers, and numbers back into text."],
    )


@case
def qwen2_moe_shared_expert():
    tok = make_qwen2_tokenizer(n_regular=380)
    n = tok.get_vocab_size()
    eot = tok.token_to_id("<|endoftext|>")
    im_end = tok.token_to_id("<|im_end|>")
    cfg = Qwen2MoeConfig(
        **common_model_kwargs(n, layers=2, heads=4, kv_heads=2, inter=96, max_pos=1024, eps=1e-6),
        num_experts=6,
        num_experts_per_tok=2,
        moe_intermediate_size=24,
        shared_expert_intermediate_size=40,
        norm_topk_prob=False,
        decoder_sparse_step=2,
        bos_token_id=eot,
        eos_token_id=im_end,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    )
    return dict(
        description="Qwen2-MoE: q/k/v biases; layer 1 routes each token to 2 of 6 experts (width 24, not "
        "renormalised) plus a shared expert of width 40 scaled by sigmoid(shared_expert_gate x); layer 0 is dense "
        "(decoder_sparse_step 2); GQA 4/2, untied, f32, ChatML.",
        features=["qwen2_moe", "moe", "top-k", "no-renormalize", "shared-expert", "decoder_sparse_step",
                  "dense+moe-layers", "experts-per-tensor", "qkv-bias", "gqa", "rope:default",
                  "config:rope_parameters", "untied", "f32", "tokenizer:byte-level-bpe", "bos:none", "chatml"],
        config=cfg, tokenizer=tok, storage_dtype=torch.float32, hub_style=None, shard=None,
        tok_kwargs=dict(bos=None, eos="<|im_end|>", pad="<|endoftext|>", chat_template=CHATML_TEMPLATE,
                        model_max_length=1024),
        generation=dict(bos_token_id=eot, eos_token_id=[im_end, eot], pad_token_id=eot),
        specials=("<|im_start|>", "<|im_end|>"),
        prompt="Rust is fast and safe.",
        batch=["Emoji 🙂", "A tokenizer turns text into numbers, and numbers back into text."],
    )


# --------------------------------------------------------------------------------------------
# Model building and reference computation
# --------------------------------------------------------------------------------------------
def write_json(path: Path, obj):
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def init_weights(model, seed: int):
    g = torch.Generator().manual_seed(seed)
    # Gemma's RMSNorm multiplies by (1 + w): its stored weights are offsets from 1.
    offset = 1.0 if model.config.model_type.startswith("gemma") else 0.0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # RMSNorm gains: random, non-trivial, positive
                p.copy_(torch.empty_like(p).uniform_(0.6 - offset, 1.4 - offset, generator=g))
            elif name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.25)
            elif "embed_tokens" in name or "lm_head" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.4)
            elif name.endswith("mlp.gate.weight"):
                # A MoE router: decisive, as trained routers are, so that each token's top-k
                # experts stand clear of the next (see ROUTER_MARGIN).
                p.copy_(torch.randn(p.shape, generator=g) * 1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.15)


def rewrite_hub_style(folder: Path, hub: dict, drop_keys=()):
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg.pop("rope_parameters", None)
    for k in drop_keys:
        cfg.pop(k, None)
    cfg.update(hub)
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    write_json(path, dict(sorted(cfg.items())))


def load_f32(folder: Path):
    m = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="eager")
    m.eval()
    return m


def top2_margin(row: torch.Tensor) -> float:
    v = torch.topk(row, 2).values
    return float(v[0] - v[1])


@torch.no_grad()
def greedy_no_cache(model, ids, n):
    """Reference greedy: full forward over the whole sequence at every step, argmax of the last row."""
    seq = list(ids)
    out, margins = [], []
    for _ in range(n):
        logits = model(torch.tensor([seq])).logits[0, -1]
        nxt = int(torch.argmax(logits))
        margins.append(top2_margin(logits))
        out.append(nxt)
        seq.append(nxt)
    return out, margins


@torch.no_grad()
def greedy_generate(model, ids, n, pad_id):
    gc = GenerationConfig(do_sample=False, max_new_tokens=n, min_new_tokens=0, eos_token_id=None,
                          pad_token_id=pad_id, bos_token_id=None, num_beams=1)
    inp = torch.tensor([ids])
    res = model.generate(inp, attention_mask=torch.ones_like(inp), generation_config=gc)
    return [int(x) for x in res[0, len(ids):]]


def rope_info(model, seq_len):
    """The global layers' rope (Gemma 3 keeps one per layer type: `full_attention_inv_freq`, ...)."""
    rot = getattr(model.model, "language_model", model.model).rotary_emb
    if hasattr(rot, "inv_freq"):
        return rot.inv_freq.detach().clone().float(), float(getattr(rot, "attention_scaling", 1.0))
    return (getattr(rot, "full_attention_inv_freq").detach().clone().float(),
            float(getattr(rot, "full_attention_attention_scaling", 1.0)))


def local_rope_inv_freq(model):
    """The sliding layers' own rope, for models that have one (Gemma 3), else None."""
    rot = getattr(model.model, "language_model", model.model).rotary_emb
    if hasattr(rot, "inv_freq") or not hasattr(rot, "sliding_attention_inv_freq"):
        return None
    return getattr(rot, "sliding_attention_inv_freq").detach().clone().float().contiguous()


def build_case(name: str, spec: dict, folder: Path):
    cfg = spec["config"]
    # A multimodal config's text model is what the reference covers (Gemma3Config nests it).
    text_cfg = cfg.get_text_config()
    tok = spec["tokenizer"]
    fast = save_tokenizer(tok, folder, **spec["tok_kwargs"])
    hf_tok = AutoTokenizer.from_pretrained(str(folder))

    prompt_ids = hf_tok(spec["prompt"]).input_ids
    assert 8 <= len(prompt_ids) <= 16, (spec["prompt"], len(prompt_ids))
    special_ids = set(hf_tok.all_special_ids) | {i for i, t in hf_tok.added_tokens_decoder.items() if t.special}
    pad_id = hf_tok.pad_token_id if hf_tok.pad_token_id is not None else 0

    for attempt in range(64):
        seed = 1000 + attempt
        for p in folder.glob("model*.safetensors*"):
            p.unlink()
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
        init_weights(model, seed)
        model = model.to(spec["storage_dtype"])
        model.generation_config = GenerationConfig(**spec["generation"])
        kw = {}
        if spec["shard"]:
            kw["max_shard_size"] = spec["shard"]
        model.save_pretrained(str(folder), **kw)
        # The semantics of the config before any rewrite, for the hub-style equivalence check
        # (reloaded from disk: casting in memory would also round the rotary inv_freq buffer).
        mem = load_f32(folder)
        if spec["hub_style"] is not None:
            rewrite_hub_style(folder, spec["hub_style"], spec.get("drop_keys", ()))
        if spec.get("rewrite"):
            path = folder / "config.json"
            write_json(path, spec["rewrite"](json.loads(path.read_text())))
        ref = load_f32(folder)
        greedy, margins = greedy_no_cache(ref, prompt_ids, GREEDY_NEW_TOKENS)
        router_gap = None
        if "moe" in spec["features"]:
            with torch.no_grad():
                rl = ref(torch.tensor([prompt_ids]), output_router_logits=True).router_logits
            k = cfg.num_experts_per_tok
            gaps = []
            for x in rl:
                if x is None:
                    continue
                v = torch.topk(x.float(), k + 1, -1).values  # router logits: the order softmax keeps
                gaps.append(float((v[:, k - 1] - v[:, k]).min()))
            router_gap = min(gaps)
        ok = (
            (router_gap is None or router_gap > ROUTER_MARGIN)  # no expert choice near a tie
            and min(margins) > MIN_MARGIN  # well-conditioned argmax at every step
            and not (set(greedy) & special_ids)  # eos/specials never produced: stop rules cannot matter
            and max(greedy) < len(hf_tok)  # no padding rows (Qwen-style vocab padding)
            and len(set(greedy)) >= 6  # a non-degenerate continuation
        )
        if ok:
            break
        print(f"  seed {seed}: min margin {min(margins):.2e}, router gap {router_gap}, greedy {greedy} -> reseed")
    else:
        raise SystemExit(f"{name}: no seed gave well-conditioned greedy decoding")

    with torch.no_grad():
        # Loading the on-disk config (possibly rewritten to hub style) must not change the model.
        x = torch.tensor([prompt_ids])
        out = ref(x, output_hidden_states=True)
        logits = out.logits[0].float()
        mem_logits = mem(x).logits[0].float()
        assert torch.equal(logits, mem_logits) or torch.allclose(logits, mem_logits, atol=1e-6, rtol=0), (
            "config rewrite changed the model", (logits - mem_logits).abs().max())
        if spec["hub_style"] is not None or spec.get("rewrite"):
            got, want = ref.config.get_text_config().rope_parameters, text_cfg.rope_parameters
            loaded = {k: v for k, v in got.items() if k != "type"}
            assert loaded == want, (got, want)
        hidden = torch.stack([h[0].float() for h in out.hidden_states])  # [layers+1, n, hidden]
        # hidden_states[-1] is the final-norm output in transformers: lm_head(h[-1]) == logits
        # (through Granite's logits_scaling and the final soft-cap where the model has them).
        head = ref.lm_head(hidden[-1]) / getattr(text_cfg, "logits_scaling", 1.0)
        cap = getattr(text_cfg, "final_logit_softcapping", None)
        if cap is not None:
            head = torch.tanh(head / cap) * cap
        assert torch.allclose(head, logits, atol=1e-5)

        gen = greedy_generate(ref, prompt_ids, GREEDY_NEW_TOKENS, pad_id)
        assert gen == greedy, ("generate() differs from the no-cache greedy loop", gen, greedy)
        full_logits = ref(torch.tensor([prompt_ids + greedy])).logits[0]
        assert torch.allclose(full_logits[: len(prompt_ids)], logits, atol=1e-5)

        tensors = {"logits": logits.contiguous(), "hidden_states": hidden.contiguous()}
        inv_freq, attn_scale = rope_info(ref, len(prompt_ids) + GREEDY_NEW_TOKENS)
        tensors["rope_inv_freq"] = inv_freq.contiguous()
        local_inv = local_rope_inv_freq(ref)
        if local_inv is not None:
            tensors["local_rope_inv_freq"] = local_inv

        # Batch: per-prompt unpadded logits, and check that a right-padded batch agrees.
        batch = []
        b_ids = [hf_tok(t).input_ids for t in spec["batch"]]
        for i, ids in enumerate(b_ids):
            tensors[f"batch{i}_logits"] = ref(torch.tensor([ids])).logits[0].float().contiguous()
        maxlen = max(len(i) for i in b_ids)
        padded = torch.tensor([i + [pad_id] * (maxlen - len(i)) for i in b_ids])
        mask = torch.tensor([[1] * len(i) + [0] * (maxlen - len(i)) for i in b_ids])
        bl = ref(padded, attention_mask=mask).logits
        batch_consistent = all(
            torch.allclose(bl[i, : len(ids)], tensors[f"batch{i}_logits"], atol=1e-5) for i, ids in enumerate(b_ids)
        )
        assert batch_consistent
        for i, (t, ids) in enumerate(zip(spec["batch"], b_ids)):
            batch.append({"text": t, "input_ids": ids, "tensor": f"batch{i}_logits", "shape": [len(ids), text_cfg.vocab_size]})

        long = None
        if spec.get("long_len"):
            long_ids = hf_tok(spec["long_text"]).input_ids[: spec["long_len"]]
            # Past the context the rope rescales at: max_position_embeddings (dynamic NTK) or the
            # original context (LongRoPE switches to its long factors).
            limit = cfg.rope_parameters.get("original_max_position_embeddings") \
                if cfg.rope_parameters.get("rope_type") == "longrope" else cfg.max_position_embeddings
            assert len(long_ids) == spec["long_len"] > limit
            fresh = load_f32(folder)  # fresh rotary state
            tensors["long_logits"] = fresh(torch.tensor([long_ids])).logits[0].float().contiguous()
            tensors["long_rope_inv_freq"] = fresh.model.rotary_emb.inv_freq.detach().clone().float().contiguous()
            long = {"input_ids": long_ids, "tensor": "long_logits", "shape": [len(long_ids), text_cfg.vocab_size],
                    "rope_inv_freq_tensor": "long_rope_inv_freq",
                    "note": "dynamic NTK: one forward pass over all positions; transformers rescales the rope "
                    "base with seq_len = len(input_ids) for every position (base * (factor*seq_len/max_pos - "
                    "(factor-1)) ** (dim/(dim-2)))."}

    # Tokenization and chat records.
    tokenization = []
    for text in tokenization_texts(spec["specials"]):
        ids = hf_tok(text).input_ids
        ids_ns = hf_tok(text, add_special_tokens=False).input_ids
        tokenization.append({
            "text": text,
            "ids": ids,
            "ids_no_special": ids_ns,
            "tokens": hf_tok.convert_ids_to_tokens(ids),
            "decoded": hf_tok.decode(ids, skip_special_tokens=True),
            "decoded_with_special": hf_tok.decode(ids, skip_special_tokens=False),
        })
    chat_text = hf_tok.apply_chat_template(CHAT_MESSAGES, tokenize=False, add_generation_prompt=True)
    chat_ids = hf_tok.apply_chat_template(CHAT_MESSAGES, tokenize=True, add_generation_prompt=True)
    if isinstance(chat_ids, dict) or hasattr(chat_ids, "keys"):
        chat_ids = chat_ids["input_ids"]
    chat_ids = [int(i) for i in chat_ids]
    assert chat_ids == hf_tok(chat_text, add_special_tokens=False).input_ids

    files = sorted(p.name for p in folder.iterdir())
    ref_json = {
        "case": name,
        "description": spec["description"],
        "features": spec["features"],
        "seed": seed,
        "versions": versions(),
        "stored_dtype": str(spec["storage_dtype"]).replace("torch.", ""),
        "reference_dtype": "float32",
        "weights_upcast_to_float32": True,
        "attn_implementation": "eager",
        "computation": "model = AutoModelForCausalLM.from_pretrained(dir, dtype=torch.float32, "
        "attn_implementation='eager'); model.eval(); torch.no_grad(); stored weights (any dtype) upcast to f32",
        "tolerance": {"logits_abs": LOGITS_ATOL, "greedy_tokens": "exact", "token_ids": "exact"},
        "tokenizer_size": len(hf_tok),
        "vocab_size": text_cfg.vocab_size,
        "prompt_text": spec["prompt"],
        "input_ids": prompt_ids,
        "logits": {"tensor": "logits", "shape": [len(prompt_ids), text_cfg.vocab_size]},
        **({"router_min_topk_gap": router_gap} if router_gap is not None else {}),
        "hidden_states": {"tensor": "hidden_states", "shape": list(hidden.shape),
                          "note": "index 0 = token embeddings, index i = residual stream after layer i, "
                          "last index = after the final RMSNorm (transformers' convention)"},
        "rope": {"tensor": "rope_inv_freq", "attention_scaling": attn_scale,
                 **({"local_tensor": "local_rope_inv_freq"} if local_inv is not None else {}),
                 "note": "inv_freq per rotary pair as transformers computed it for this config (the global "
                 "layers' rope where layer types have their own; local_tensor: the sliding layers'); "
                 "attention_scaling multiplies cos and sin"},
        "greedy": {
            "max_new_tokens": GREEDY_NEW_TOKENS,
            "ids": greedy,
            "text": hf_tok.decode(greedy, skip_special_tokens=False),
            "min_top2_margin": min(margins),
            "step_top2_margins": margins,
            "eos": "ignored (no special token appears in the continuation; do_sample=False, exactly 12 tokens)",
            "checked": "no-cache full-forward argmax loop == model.generate(do_sample=False)",
        },
        "batch": batch,
        "batch_right_padded_consistent": batch_consistent,
        "tokenization": tokenization,
        "chat": {"messages": CHAT_MESSAGES, "add_generation_prompt": True, "text": chat_text, "ids": chat_ids},
        "files": files,
    }
    if long:
        ref_json["long"] = long
    if "enable_thinking" in (hf_tok.chat_template or ""):
        # The template's switch as transformers passes it: apply_chat_template(..., enable_thinking=False).
        off = hf_tok.apply_chat_template(CHAT_MESSAGES, tokenize=False, add_generation_prompt=True,
                                         enable_thinking=False)
        ref_json["chat_template_kwargs"] = {"kwargs": {"enable_thinking": False}, "text": off}
    save_file(tensors, str(folder / "reference.safetensors"), metadata={"format": "pt"})  # one key: safetensors orders metadata maps arbitrarily
    write_json(folder / "reference.json", ref_json)
    return ref_json


def versions():
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
    }


# --------------------------------------------------------------------------------------------
# Verification in a fresh process: reload every folder with the Auto classes and recompute.
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def verify_case(folder: Path) -> list[str]:
    errs = []
    ref = json.loads((folder / "reference.json").read_text())
    t = load_file(str(folder / "reference.safetensors"))
    model = load_f32(folder)
    tok = AutoTokenizer.from_pretrained(str(folder))
    ids = ref["input_ids"]
    if tok(ref["prompt_text"]).input_ids != ids:
        errs.append("prompt tokenization")
    logits = model(torch.tensor([ids])).logits[0]
    d = float((logits - t["logits"]).abs().max())
    if d > 1e-5:
        errs.append(f"logits max diff {d}")
    g, _ = greedy_no_cache(model, ids, GREEDY_NEW_TOKENS)
    if g != ref["greedy"]["ids"]:
        errs.append("greedy")
    for b in ref["batch"]:
        bl = model(torch.tensor([b["input_ids"]])).logits[0]
        if float((bl - t[b["tensor"]]).abs().max()) > 1e-5:
            errs.append(f"batch {b['tensor']}")
    if "long" in ref:
        fresh = load_f32(folder)
        ll = fresh(torch.tensor([ref["long"]["input_ids"]])).logits[0]
        if float((ll - t["long_logits"]).abs().max()) > 1e-5:
            errs.append("long_logits")
    for rec in ref["tokenization"]:
        if tok(rec["text"]).input_ids != rec["ids"]:
            errs.append(f"tokenize {rec['text']!r}")
        if tok(rec["text"], add_special_tokens=False).input_ids != rec["ids_no_special"]:
            errs.append(f"tokenize no-special {rec['text']!r}")
        if tok.decode(rec["ids"], skip_special_tokens=True) != rec["decoded"]:
            errs.append(f"decode {rec['text']!r}")
    chat = ref["chat"]
    if tok.apply_chat_template(chat["messages"], tokenize=False, add_generation_prompt=True) != chat["text"]:
        errs.append("chat text")
    # Sizes and the tokenizer/vocab relation.
    cfg = json.loads((folder / "config.json").read_text())
    if cfg.get("text_config", cfg)["vocab_size"] < len(tok):
        errs.append("vocab_size < tokenizer size")
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    if not tc.get("chat_template"):
        errs.append("no chat_template in tokenizer_config.json")
    return errs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--verify", action="store_true", help="only verify existing fixtures")
    ap.add_argument("--no-verify", action="store_true", help="generate without the verification pass")
    ap.add_argument("--case", action="append", help="only this case (repeatable)")
    args = ap.parse_args()
    names = args.case or list(CASES)
    for n in names:
        if n not in CASES:
            raise SystemExit(f"unknown case {n}; known: {', '.join(CASES)}")

    if not args.verify:
        OUT.mkdir(parents=True, exist_ok=True)
        for name in names:
            folder = OUT / name
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            print(f"[make] {name}")
            spec = CASES[name]()
            r = build_case(name, spec, folder)
            print(f"  seed {r['seed']}, prompt {len(r['input_ids'])} ids, greedy {r['greedy']['ids']}, "
                  f"min margin {r['greedy']['min_top2_margin']:.3f}")
    if args.no_verify:
        return
    failed = False
    for name in names:
        errs = verify_case(OUT / name)
        size = sum(p.stat().st_size for p in (OUT / name).iterdir())
        print(f"[verify] {name}: {'OK' if not errs else 'FAIL ' + '; '.join(errs)} ({size / 1024:.0f} KiB)")
        failed |= bool(errs)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
