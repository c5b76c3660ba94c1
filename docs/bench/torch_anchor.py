"""PyTorch / transformers side of `cargo xtask bench --against-torch VENV`: the workloads of
`rlhf bench`, under the same model and workload names, one JSON object per line.

Workloads (Llama-style, untied head, FFN 4*d, as crates/rlhf-cli/src/bench.rs):
  tiny d64 L2 V256 and small d256 L4 V512: forward BxT (no grad), train step BxT (next-token
  cross-entropy, backward, AdamW lr 1e-4), sample bN prompt 16 new 48;
  SmolLM2-135M from the project's GGUF (with --smol DIR): forward 4x128, train step 4x128 (the
  whole model), sample bN prompt 32 new 32.
Sampling is transformers' `generate` with the KV cache, temperature 0.7, no EOS stop, timed after
one warm-up call, prefill included. Forward and train are medians of timed repetitions after
warm-ups. 2 threads. Each line carries the process's peak resident memory so far
(`ru_maxrss`): run one workload per process (--only) to read a workload's own peak.

Setup (once, about 6 GB): python3 -m venv VENV && VENV/bin/pip install torch==2.15.* transformers==5.24.* accelerate gguf
Run: VENV/bin/python docs/bench/torch_anchor.py [--smol DIR] [--only SUBSTRING] [--quick]"""
import json
import resource
import statistics
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

torch.set_num_threads(2)
torch.manual_seed(0)
ARGS = sys.argv[1:]
ONLY = ARGS[ARGS.index("--only") + 1] if "--only" in ARGS else ""
QUICK = "--quick" in ARGS
REPS = 2 if QUICK else 10


def llama(d, layers, heads, vocab, ctx):
    return LlamaConfig(vocab_size=vocab, hidden_size=d, intermediate_size=4 * d, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=ctx,
                       tie_word_embeddings=False, attn_implementation="sdpa", eos_token_id=None, pad_token_id=0)


def emit(model, workload, tps):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"backend": "torch", "model": model, "workload": workload, "tokens_per_s": tps,
                      "peak_rss_mib": peak}), flush=True)


def ids(m, b, t):
    return torch.randint(3, m.config.vocab_size, (b, t))


def forward(m, b, t, reps):
    x, times = ids(m, b, t), []
    with torch.no_grad():
        for i in range(reps + 1):
            start = time.perf_counter()
            m(input_ids=x)
            if i > 0:
                times.append(time.perf_counter() - start)
    return b * t / statistics.median(times)


def train(m, b, t, warmup, steps):
    m.train()
    x, times = ids(m, b, t), []
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss = m(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    m.eval()
    return b * t / statistics.median(times)


def sample(m, b, prompt, new):
    x = ids(m, b, prompt)
    with torch.no_grad():
        m.generate(x, max_new_tokens=4, do_sample=True, temperature=0.7)
        start = time.perf_counter()
        m.generate(x, max_new_tokens=new, min_new_tokens=new, do_sample=True, temperature=0.7)
    return b * new / (time.perf_counter() - start)


def smol(d):
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(d, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype=torch.float32)
    m.generation_config.eos_token_id = None
    return m.eval()


def models():
    tiny = ("tiny d64 L2 V256", lambda: LlamaForCausalLM(llama(64, 2, 4, 256, 128)).eval(), 16, 64, 2, 16, 48, [1, 8, 16, 32])
    small = ("small d256 L4 V512", lambda: LlamaForCausalLM(llama(256, 4, 4, 512, 256)).eval(), 16, 128, 2, 16, 48, [1, 8, 16, 32])
    out = [tiny, small]
    if "--smol" in ARGS:
        d = ARGS[ARGS.index("--smol") + 1]
        out.append(("SmolLM2-135M", lambda: smol(d), 4, 128, 1, 32, 32, [1, 8, 32]))
    return out


for name, make, b, t, warmup, prompt, new, batches in models():
    work = [(f"forward {b}x{t}", lambda m: forward(m, b, t, min(REPS, 3) if name.startswith("Smol") else REPS)),
            (f"train step {b}x{t}", lambda m: train(m, b, t, warmup, min(REPS, 3) if name.startswith("Smol") else REPS))]
    work += [(f"sample b{n} prompt {prompt} new {new}", lambda m, n=n: sample(m, n, prompt, new)) for n in batches]
    work = [(w, f) for w, f in work if ONLY in f"{name} {w}"]
    if not work:
        continue
    model = make()
    for w, f in work:
        emit(name, w, f(model))
