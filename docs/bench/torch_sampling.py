"""transformers' `generate` at the batch sizes `rlhf bench` measures (1, 8, 16, 32), on the same
workloads: tiny d64 L2 V256 and small d256 L4 V512 (prompt 16, 48 new tokens), SmolLM2-135M from
the project's GGUF (prompt 32, 32 new tokens). Temperature 0.7, KV cache, no EOS stop, 2 threads,
timed after one warm-up call, prefill included (as in `rlhf bench`).

Setup (about 3 GB, once): python3 -m venv VENV && VENV/bin/pip install torch transformers accelerate gguf
Run: VENV/bin/python docs/bench/torch_sampling.py [--smol models/] [--only SUBSTRING]"""
import sys, time, torch
from transformers import LlamaConfig, LlamaForCausalLM

torch.set_num_threads(2)
torch.manual_seed(0)
only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else ""


def cfg(d, layers, heads, vocab, ctx):
    return LlamaConfig(vocab_size=vocab, hidden_size=d, intermediate_size=4 * d, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=ctx,
                       tie_word_embeddings=False, attn_implementation="sdpa", eos_token_id=None, pad_token_id=0)


def sample(m, batch, prompt, new):
    x = torch.randint(3, m.config.vocab_size, (batch, prompt))
    with torch.no_grad():
        m.generate(x, max_new_tokens=4, do_sample=True, temperature=0.7)
        t = time.perf_counter()
        m.generate(x, max_new_tokens=new, min_new_tokens=new, do_sample=True, temperature=0.7)
    return batch * new / (time.perf_counter() - t)


models = [("tiny d64 L2 V256", lambda: LlamaForCausalLM(cfg(64, 2, 4, 256, 128)).eval(), 16, 48, [1, 8, 16, 32]),
          ("small d256 L4 V512", lambda: LlamaForCausalLM(cfg(256, 4, 4, 512, 256)).eval(), 16, 48, [1, 8, 16, 32])]
if "--smol" in sys.argv:
    from transformers import AutoModelForCausalLM
    d = sys.argv[sys.argv.index("--smol") + 1]

    def smol():
        m = AutoModelForCausalLM.from_pretrained(d, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                                                 dtype=torch.float32).eval()
        m.generation_config.eos_token_id = None
        return m
    models.append(("SmolLM2-135M", smol, 32, 32, [1, 8, 32]))
for name, make, prompt, new, batches in models:
    wanted = [b for b in batches if only in f"{name} sample b{b}"]
    if not wanted:
        continue
    m = make()
    for b in wanted:
        print(f"torch    {name:<22} sample b{b} prompt {prompt} new {new:<18} {sample(m, b, prompt, new):12.0f} tok/s",
              flush=True)
