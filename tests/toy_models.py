"""Small models with the module names the LoRA tests target: an MLP (fc1, fc2) and a nested model
(embed, blocks.N.q, blocks.N.v, blocks.N.norm, blocks.N.mlp.0/2, head)."""
import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, d_in=6, d_hidden=10, d_out=4):
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(d_hidden, d_out)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.q = nn.Linear(d, d)
        self.v = nn.Linear(d, d, bias=False)
        self.norm = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        return x + self.mlp(self.norm(x + self.v(torch.tanh(self.q(x)))))


class Nested(nn.Module):
    """Nested module names: embed, blocks.0.q, blocks.0.mlp.2, ..., head."""

    def __init__(self, d_in=5, d=8, n=2, d_out=3):
        super().__init__()
        self.embed = nn.Linear(d_in, d)
        self.blocks = nn.ModuleList([Block(d) for _ in range(n)])
        self.head = nn.Linear(d, d_out)

    def forward(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)
