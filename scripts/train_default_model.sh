#!/usr/bin/env bash
# Trains the small default model that `silica generate` uses when no --model is given
# (models/default/, embedded in the binary). See docs/training.md for the run it produced.
#
#   bash scripts/train_default_model.sh [STEPS]      # default 600 steps (~15 min on 2 CPU cores)
#
# 1. a byte-level BPE tokenizer (1024 tokens) is trained on models/default/corpus.txt (Jules Verne,
#    "Around the World in Eighty Days", public domain, Project Gutenberg #103, header removed) with
#    the pinned `tokenizers` of .venv-fixtures (scripts/make_fixtures.sh makes it);
# 2. a 4-layer Llama (hidden 128, ~1M parameters, tied embeddings) starts from random weights and
#    `silica train` trains it on the corpus: windows of 128 tokens, batch 16, AdamW lr 3e-3,
#    warmup 30 + cosine, clipping 1.0, weight decay 0.1;
# 3. the optimizer state is dropped (only the model ships); trainer_state.json keeps the losses.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STEPS="${1:-600}"
VENV="${FIXTURES_VENV:-$ROOT/.venv-fixtures}"
SILICA="${SILICA:-$ROOT/target/release/silica}"
OUT="$ROOT/crates/silica/default"  # models/default links here
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
if [ ! -x "$VENV/bin/python" ]; then bash "$ROOT/scripts/make_fixtures.sh" --verify; fi
if [ ! -x "$SILICA" ]; then (cd "$ROOT" && cargo build --release -p silica); fi

INIT="$WORK/init"
mkdir -p "$INIT"
"$VENV/bin/python" - "$OUT/corpus.txt" "$INIT" <<'PY'
import json, sys
from pathlib import Path
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
corpus, out = Path(sys.argv[1]), Path(sys.argv[2])
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=["<|endoftext|>"],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
tok.train([str(corpus)], trainer)
fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
fast.save_pretrained(str(out))
config = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=1024, hidden_size=128,
              intermediate_size=384, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
              head_dim=32, max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0,
              hidden_act="silu", tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
              bos_token_id=0, eos_token_id=0, torch_dtype="float32", initializer_range=0.02)
(out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
print("tokenizer:", tok.get_vocab_size(), "tokens;", len(tok.encode(corpus.read_text()).ids), "corpus tokens")
PY

"$SILICA" train --model "$INIT" --init random --seed 0 --data "$OUT/corpus.txt" \
  --seq-len 128 --batch 16 --steps "$STEPS" --lr 3e-3 --warmup 30 --schedule cosine \
  --grad-clip 1.0 --weight-decay 0.1 --out "$WORK/trained" --json | tail -n 1 > "$WORK/result.json"

for f in config.json model.safetensors tokenizer.json tokenizer_config.json trainer_state.json; do
  cp "$WORK/trained/$f" "$OUT/$f"
done
"$VENV/bin/python" - "$WORK/result.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
l = r["losses"]
marks = sorted({0, 9, 49, 99, 199, 299, 399, 499, len(l) - 1} & set(range(len(l))))
print("loss at steps:", ", ".join(f"{i + 1}: {l[i]:.3f}" for i in marks))
print(f"tokens/s: {r['tokens_per_s']:.0f}")
PY
du -sh "$OUT"/* | sed 's/^/size: /'
