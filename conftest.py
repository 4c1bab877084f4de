# Makes the repository root importable for the tests (train.py, training/, plugins/, ...) and
# runs torch single-threaded: the test networks are tiny, and intra-op threads only add overhead
# (and contend with the multi-process tests) on the 2-core CI machine. TEST_TORCH_THREADS overrides.
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
torch.set_num_threads(int(os.environ.get('TEST_TORCH_THREADS', '1')))
