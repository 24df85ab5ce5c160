import os

# Triton kernels run on CPU tensors only under its interpreter, and the variable must be set before triton is
# imported. On a machine without a CUDA driver, turn it on for the whole test session.
if not os.path.exists("/dev/nvidia0") and "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402


def _pin_threads_per_xdist_worker():
    """Under `pytest -n N` every worker would start one torch thread per core: N workers on N cores then
    oversubscribe the CPU several times over and run slower than one worker. Give each worker one thread."""
    if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(1)


_pin_threads_per_xdist_worker()


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; run through the device tool (pytest -m gpu)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds on 2 CPU cores")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `pytest -m gpu` on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
