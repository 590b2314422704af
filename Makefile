# seqcore: `make test` and `make bench` work on a fresh machine with Python 3 and gcc.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# triton 3.6.0 is the GPU machine's version; its interpreter breaks on numpy 2.4.
# torch 2.13.0 is the CPU build on this machine's disk (an unpinned torch pulls CUDA builds).
PINS := "numpy<2.4" torch==2.13.0 triton==3.6.0
JOBS ?= 2
# aarch64 cross toolchain and emulator for `make test-arm` (Debian: gcc-aarch64-linux-gnu,
# qemu-user)
ARM_CC ?= aarch64-linux-gnu-gcc
ARM_RUN ?= qemu-aarch64 -L /usr/aarch64-linux-gnu

.PHONY: install build check-c test test-arm bench bench-avx2 bench-gpu clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

install: $(PY)
	$(PIP) install -q $(PINS)
	$(PIP) install -q -e ".[test]" $(PINS)
	$(PY) -c "import seqcore; print('seqcore backends:', seqcore.available_backends())"

# Rebuild the C extension in place after editing csrc/: recompiles only the objects an edit
# changes (each source once per ISA level, cached in build/obj by content, compiler and flags),
# then relinks (locked: several builds may race).
build: $(PY)
	flock /tmp/seqcore-build.lock $(PY) csrc/build.py

# The C-level reference checks (csrc/check/): every kernel at every ISA level this CPU runs,
# against scalar references, on one thread and on all.
check-c: $(PY)
	flock /tmp/seqcore-build.lock $(PY) csrc/build.py check

# Every test: the C checks, then pytest (the Triton kernels under the interpreter when no GPU
# is present; the C tests at every ISA level this CPU runs).
test: install check-c
	TRITON_INTERPRET=$${TRITON_INTERPRET:-1} $(PY) -m pytest -q tests

# The C sources cross-compiled for aarch64 (baseline and NEON levels) and their reference
# checks run under qemu.
test-arm: $(PY)
	flock /tmp/seqcore-build.lock $(PY) csrc/build.py check --cc "$(ARM_CC)" --run "$(ARM_RUN)"

bench: install
	mkdir -p bench/out
	$(PY) -m pytest -q bench --benchmark-only --benchmark-json=bench/out/bench.json \
		--benchmark-columns=min,median,mean,rounds --benchmark-sort=name
	$(PY) bench/report.py bench/out/bench.json

# The AVX2 level measured on a bigger (AVX-512) CPU: both sides forced down, torch's MKL too
# (MKL ignores ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA and would keep using AVX-512).
bench-avx2:
	SEQCORE_CPU_ISA=avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 \
		MKL_ENABLE_INSTRUCTIONS=AVX2 $(MAKE) bench

# On a CUDA machine: every Triton kernel against the reference (fp16/bf16/fp32) and timed
# against torch SDPA backends and cuDNN LSTM/GRU; JSON under $$OUT (default bench/out).
bench-gpu:
	$(PY) bench/gpu_suite.py

clean:
	rm -rf build *.egg-info seqcore/_csrc*.so seqcore/_csrc.c bench/out .pytest_cache
