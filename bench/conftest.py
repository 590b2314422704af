"""pytest setup for the benchmark suites in bench/ (run by `make bench`).

- Collects bench/bench_*.py (the repository's pytest config collects only tests/test_*.py;
  this hook is scoped to bench/, so tests/ behaves as before).
- On the CPU: torch uses 2 threads (this machine's cores), so numbers compare between runs.
- The Triton interpreter is never turned on here: on a machine without a GPU the "triton"
  backend is not benchmarked (interpreted kernels say nothing about speed).
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # bench/_bench.py

import _bench  # noqa: E402


def pytest_collect_file(file_path, parent):
    # a file named on the command line is collected by pytest itself; don't add it twice
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


_LOADAVG_AT_START = os.getloadavg()  # other users of the CPU make times noisy; report.py says so


def pytest_configure(config):
    if not _bench.HAS_CUDA:
        import torch

        torch.set_num_threads(_bench.CPU_THREADS)


def pytest_benchmark_update_machine_info(config, machine_info):
    import torch

    machine_info["seqcore_device"] = _bench.device_name()
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["cpu_count"] = os.cpu_count()
    machine_info["loadavg_at_start"] = _LOADAVG_AT_START
    # the ISA levels of both sides (force them with SEQCORE_CPU_ISA, and for torch with
    # ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA and MKL_ENABLE_INSTRUCTIONS: torch's matmuls and
    # RNNs go to MKL, which ignores the first two and keeps using AVX-512 otherwise)
    machine_info["seqcore_cpu_isa"] = _bench.seqcore_isa()
    machine_info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    machine_info["isa_env"] = {k: os.environ.get(k) for k in
                               ("SEQCORE_CPU_ISA", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
                                "MKL_ENABLE_INSTRUCTIONS")}
    try:
        import seqcore

        machine_info["seqcore_backends"] = seqcore.backend_status()
    except Exception as e:  # noqa: BLE001 - recorded, not fatal
        machine_info["seqcore_backends"] = f"import failed: {e}"
