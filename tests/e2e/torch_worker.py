"""A PyTorch training loop as one of a downpour job's workers: the README's example, run by
tests/e2e/test_api.py as a plain script.

    python torch_worker.py RUN_DIR SHARD_OF_DATA NUMBER_OF_SHARDS STEPS

The job's config asks for external workers (`workers: {count: 0, external: 2}`) and its model
is the same MLP as the torch.nn.Sequential below, so the parameter names match
(`1.weight`, `1.bias`, `3.weight`, `3.bias`). Each step: the weights from `pull()` go into
the torch model, a minibatch's `.grad`s are pushed; the shards apply the job's update rule.
"""
import sys

import numpy as np
import torch

import downpour
from downpour.worker.datasets import load

run_dir, part, parts, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
data = load("digits")                       # the job's data set, as the evaluator reads it
x = torch.from_numpy(data.x_train[part::parts])
y = torch.from_numpy(data.y_train[part::parts]).long()
net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
rng = np.random.default_rng(part)

with downpour.connect(run_dir, worker=True) as ps:
    for _ in range(steps):
        net.load_state_dict({name: torch.from_numpy(w) for name, w in ps.pull().items()})
        batch = torch.from_numpy(rng.integers(0, len(x), 32))
        loss = torch.nn.functional.cross_entropy(net(x[batch]), y[batch])
        net.zero_grad()
        loss.backward()
        ps.push({name: p.grad.numpy() for name, p in net.named_parameters()})
    print(f"worker {ps.rank}: {ps.clock} pushes, last loss {loss.item():.4f}")
