import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)  # tiny tensors gain nothing from threads; avoids oversubscription

DATA = Path(__file__).parent / "data"
GOLDENS = DATA / "goldens"
DECODES = GOLDENS / "decodes"
FAMILY_DIRS = ["llada", "llada_sharded", "dream", "fast_dllm_v2", "fast_dllm_v2_tied", "sdar", "llada_moe", "llada2"]


@pytest.fixture(scope="session")
def goldens_dir() -> Path:
    return GOLDENS
