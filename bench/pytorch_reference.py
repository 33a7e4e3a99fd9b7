"""PyTorch reference for `host bench train`: the same 2-layer tied LSTM language model, the
same batch shapes, timed the same way (training steps with clipping + SGD, then evaluation
batches of 10 x 35 without gradients), so both can run side by side on one machine.

    pip install torch numpy
    python3 bench/pytorch_reference.py --preset book --threads 2

Prints `train: N tokens/s` and `eval: N tokens/s` like the Rust bench.
"""
import argparse
import time

import torch
from torch import nn

PRESETS = {  # dim = hidden, dropout; batch 20 x time 35, lr 20, clip 0.25 for all
    "tiny": (16, 0.2),
    "embedded": (64, 0.2),
    "small": (200, 0.2),
    "book": (650, 0.5),
}


class BetterRnnlm(nn.Module):
    """Embedding -> dropout -> LSTM -> dropout -> LSTM -> dropout -> tied affine."""

    def __init__(self, vocab: int, dim: int, dropout: float):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        nn.init.normal_(self.embed.weight, std=0.01)
        self.lstm1 = nn.LSTM(dim, dim)
        self.lstm2 = nn.LSTM(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.out_bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, ids, state):
        x = self.drop(self.embed(ids))
        h1, s1 = self.lstm1(x, state[0])
        h2, s2 = self.lstm2(self.drop(h1), state[1])
        logits = self.drop(h2) @ self.embed.weight.t() + self.out_bias
        return logits, (s1, s2)


def detach(state):
    return tuple(tuple(t.detach() for t in s) for s in state)


def zero_state(batch: int, dim: int):
    z = lambda: torch.zeros(1, batch, dim)  # noqa: E731
    return ((z(), z()), (z(), z()))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="embedded", choices=PRESETS)
    p.add_argument("--vocab", type=int, default=10000)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    dim, dropout = PRESETS[a.preset]
    batch, steps, vocab = 20, 35, a.vocab
    model = BetterRnnlm(vocab, dim, dropout)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    ids = torch.randint(vocab, (steps, batch))
    targets = torch.randint(vocab, (steps, batch))
    state = zero_state(batch, dim)

    def train_step(state):
        logits, state = model(ids, state)
        loss = loss_fn(logits.view(-1, vocab), targets.view(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()
        return detach(state)

    model.train()
    state = train_step(state)  # warm-up
    t = time.perf_counter()
    for _ in range(a.iters):
        state = train_step(state)
    train_tps = a.iters * steps * batch / (time.perf_counter() - t)

    model.eval()
    eval_batch = 10
    eval_ids = torch.randint(vocab, (steps, eval_batch))
    state = zero_state(eval_batch, dim)
    with torch.no_grad():
        logits, state = model(eval_ids, state)  # warm-up
        t = time.perf_counter()
        for _ in range(2 * a.iters):
            logits, state = model(eval_ids, state)
            loss_fn(logits.view(-1, vocab), eval_ids.view(-1))
        eval_tps = 2 * a.iters * steps * eval_batch / (time.perf_counter() - t)
    print(f"preset {a.preset}: torch {torch.__version__}, threads={a.threads}")
    print(f"train: {train_tps:10.0f} tokens/s")
    print(f"eval:  {eval_tps:10.0f} tokens/s")


if __name__ == "__main__":
    main()
