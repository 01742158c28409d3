"""Tests of sitsflow_models; run from models/ with
`PYTHONPATH=../.deps/models-python python3 -m unittest discover -s tests -t .`"""

import torch

# One thread: the tests' tensors are tiny, and the machine is shared (oversubscribed
# OpenMP threads spin and slow everything down).
torch.set_num_threads(1)
