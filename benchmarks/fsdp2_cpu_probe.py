"""Does torch's FSDP2 (`fully_shard`) run on CPU processes (gloo)? (issue 23 item 6, docs/training.md)

    python -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/fsdp2_cpu_probe.py

Each rank prints "ok", its loss and the type of a sharded weight (DTensor) after a forward and backward pass.
"""

import torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
dist.init_process_group("gloo")
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
for layer in model:
    if isinstance(layer, torch.nn.Linear):
        fully_shard(layer)
fully_shard(model)
x = torch.randn(4, 8) + dist.get_rank()
loss = model(x).pow(2).mean()
loss.backward()
print(dist.get_rank(), "ok", loss.item(), type(model[0].weight).__name__, flush=True)
dist.destroy_process_group()
