"""Training parity fixtures: the same steps that `silica train` runs, done with torch.optim.AdamW.

Writes models/fixtures/train/<case>/:
  config.json, model.safetensors   the initial weights (a Hugging Face folder)
  batches.safetensors              `input_ids` int32 [steps, batch, seq_len + 1]
  expected.safetensors             the weights after all steps (same names)
  reference.json                   per-step losses, grad norms, learning rates, hyper-parameters

Per step: loss = mean next-token cross-entropy of model(input_ids[s, :, :-1]) against
input_ids[s, :, 1:]; loss.backward(); clip_grad_norm_(max_norm) (optional); AdamW.step() with the
learning rate of transformers' warmup + cosine (or constant) schedule. Run with
scripts/make_train_fixtures.sh (pinned versions in requirements-fixtures.txt).
"""

import json
import sys
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
)

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "models" / "fixtures" / "train"

CASES = {
    # Tied embeddings (gather + lm_head share one weight), GQA 4/2, clipping that triggers,
    # warmup + cosine, weight decay on every weight.
    "tied-gqa-clip-cosine": dict(
        config=dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=True,
                    rope_theta=10000.0),
        steps=6, batch=4, seq_len=8, seed=1,
        lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, grad_clip=1.0,
        schedule="cosine", warmup=2,
    ),
    # Untied head, MHA with qkv bias (Qwen2-style), constant LR, no clipping, PyTorch defaults.
    "untied-bias-constant": dict(
        config=dict(vocab_size=48, hidden_size=32, intermediate_size=40, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False,
                    rope_theta=10000.0, attention_bias=True),
        steps=4, batch=2, seq_len=6, seed=2,
        lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, grad_clip=None,
        schedule="constant", warmup=0,
    ),
}


def build(name, c):
    folder = OUT / name
    folder.mkdir(parents=True, exist_ok=True)
    cfg = LlamaConfig(**c["config"], max_position_embeddings=128, rms_norm_eps=1e-5, hidden_act="silu",
                      initializer_range=0.02, attention_dropout=0.0, mlp_bias=False, use_cache=False,
                      bos_token_id=1, eos_token_id=2)
    torch.manual_seed(c["seed"])
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    g = torch.Generator().manual_seed(c["seed"])
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(torch.empty_like(p).uniform_(0.6, 1.4, generator=g))
            elif n.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.25)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    model.save_pretrained(str(folder), safe_serialization=True)
    (folder / "generation_config.json").unlink(missing_ok=True)

    V, S, B, T = cfg.vocab_size, c["steps"], c["batch"], c["seq_len"]
    ids = torch.randint(0, V, (S, B, T + 1), generator=g, dtype=torch.int64).to(torch.int32)
    save_file({"input_ids": ids}, str(folder / "batches.safetensors"))

    params = [p for _, p in model.named_parameters()]
    opt = torch.optim.AdamW(params, lr=c["lr"], betas=c["betas"], eps=c["eps"], weight_decay=c["weight_decay"])
    if c["schedule"] == "cosine":
        sched = get_cosine_schedule_with_warmup(opt, c["warmup"], S)
    else:
        sched = get_constant_schedule_with_warmup(opt, c["warmup"])
    losses, norms, lrs = [], [], []
    model.train()
    for s in range(S):
        batch = ids[s].to(torch.int64)
        logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        if c["grad_clip"] is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, c["grad_clip"])
        else:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        losses.append(loss.item())
        norms.append(norm.item())
    final = {n: p.detach().clone().contiguous() for n, p in model.named_parameters()}
    save_file(final, str(folder / "expected.safetensors"))
    ref = dict(
        description="torch.optim.AdamW steps on batches.safetensors from the initial weights in this folder",
        losses=losses, grad_norms=norms, lrs=lrs,
        steps=S, batch=B, seq_len=T, lr=c["lr"], beta1=c["betas"][0], beta2=c["betas"][1], eps=c["eps"],
        weight_decay=c["weight_decay"], grad_clip=c["grad_clip"], schedule=c["schedule"], warmup=c["warmup"],
        clipped_steps=sum(1 for n in norms if c["grad_clip"] is not None and n > c["grad_clip"]),
        versions=dict(torch=torch.__version__, transformers=transformers.__version__),
    )
    (folder / "reference.json").write_text(json.dumps(ref, indent=2) + "\n")
    print(f"{name}: losses {['%.4f' % l for l in losses]} grad norms {['%.3f' % n for n in norms]}")


if __name__ == "__main__":
    names = sys.argv[1:] or list(CASES)
    for n in names:
        build(n, CASES[n])
