"""Data-parallel SSVI in your own loop: ``torchrun --nproc_per_node=2 examples/ddp_mlp.py``.

Each process trains on its shard of every global batch; SSVI sees the initialized process group
and keeps the ranks identical by itself (gradients averaged every step, the same masks at every
update; see pyro_ssvi/distributed.py). What is yours to do: start the process group, shard the
data with equal local batches, give each rank its own random stream, write results on rank 0.
Runs as one ordinary process too (``python examples/ddp_mlp.py``).
"""
import pyro
import torch
import torch.distributed as dist
from pyro.infer import TraceMeanField_ELBO
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from pyro_ssvi import SSVI, MaskedAutoNormal, models
from pyro_ssvi.data import DeviceLoader, load_dataset
from pyro_ssvi.distributed import init_from_env
from pyro_ssvi.metrics import classification_metrics
from pyro_ssvi.predictive import predict

torch.set_num_threads(1)
pyro.enable_validation(False)
# nccl on CUDA (one GPU per process, LOCAL_RANK), gloo on CPU; None when not under torchrun.
device = init_from_env(torch.device("cuda" if torch.cuda.is_available() else "cpu"), timeout_s=300)
device = device or torch.device("cpu")
rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
torch.manual_seed(1000 + rank)  # each rank its own LRT noise; rank 0's initial state is copied to all

train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
x_train, y_train = next(iter(DeviceLoader(train, batch_size=len(train), device="cpu", shuffle=False)))
x_test, y_test = next(iter(DeviceLoader(test, batch_size=len(test), device="cpu", shuffle=False)))
global_batch = 64  # the batch of the objective: the same as one process with batch 64
# DistributedSampler pads the epoch so that every rank gets the same number of equal batches
# (SSVI averages the ranks' gradients, which is the global batch's gradient only then).
sampler = DistributedSampler(TensorDataset(x_train, y_train), num_replicas=world, rank=rank, seed=0)
loader = DataLoader(TensorDataset(x_train, y_train), batch_size=global_batch // world, sampler=sampler,
                    drop_last=True)

model = models.mlp([64, 256, 256, 10], prior_scale=1.0, num_data=len(train)).to(device)
guide = MaskedAutoNormal(model, sparsity=0.9)
guide(x_train[:2].to(device), y_train[:2].to(device))
optim = torch.optim.SGD([*guide.parameters(), *model.parameters()], lr=0.05, momentum=0.9)
epochs = 30
# distributed=None (the default) turns data parallelism on because a process group of more
# than one rank is initialized; pass distributed=DistributedSync(...) for other settings.
svi = SSVI(model, guide, optim, TraceMeanField_ELBO(), num_steps=epochs * len(loader),
           update_interval=50, num_data=len(train))
for epoch in range(epochs):
    sampler.set_epoch(epoch)  # a new shared shuffle each epoch
    losses = [svi.step(x.to(device), y.to(device)) for x, y in loader]  # the global batch's loss
    if rank == 0 and epoch % 10 == 9:
        print(f"epoch {epoch + 1}: loss {sum(losses) / len(losses):.3f}")

if dist.is_initialized():  # done with each other: meet, then leave together (no rank talks to a closed one)
    dist.barrier()
    dist.destroy_process_group()
if rank == 0:  # every rank holds the same posterior: one evaluates and writes
    result = predict(model, guide, x_test.to(device), num_samples=5)
    metrics = classification_metrics(result.probs.cpu(), y_test)
    print(f"{world} process(es): accuracy {metrics['accuracy']:.3f}, NLL {metrics['nll']:.3f}, "
          f"density {guide.density():.2f}, updates {len(svi.surgery_log)}")
