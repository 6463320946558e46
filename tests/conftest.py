"""Shared test set-up."""

import torch

# The tests use many small tensors; on a 2-core CI machine one intra-op thread is fastest and keeps
# timings stable when other processes share the machine.
torch.set_num_threads(1)
