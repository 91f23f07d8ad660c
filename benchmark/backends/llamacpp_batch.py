"""Order-independent choice scoring on llama.cpp: several sequences per decode, shared prefixes copied.

Why this exists (issue 22). llama.cpp's CPU kernels are not batch-invariant, so a prompt's
log-probabilities used to depend on what was scored before it. Measured on the llama.cpp of
llama-cpp-python 0.3.36 (ggml-cpu ``ops.cpp``, SmolLM2-135M Q4_1, AVX2 build):

- without flash attention, a decode of one token per sequence takes another attention path than a
  decode of several: the same prompt scored as "49 tokens, then 1" moved by up to 0.34 nats;
- with flash attention, a stream of 64 or more queries in one ubatch takes the tiled kernel
  (``GGML_FA_TILE_Q``; float32 GEMM), fewer queries the one-row kernel (float16 dot products): the
  same 91-token prompt evaluated whole or in chunks moved by up to 0.75 nats on the vocabulary;
- one query in a single stream over 512 or more cells takes the split-KV kernel, whose reduction
  depends on the thread count;
- with a unified KV cache, sequences sharing one cell buffer change each other's results.

What makes the result a function of the request alone, here: a non-unified KV cache (one stream of
cells per sequence, laid out from cell 0 as in a fresh evaluation), flash attention, every decode
giving each stream the same number of tokens, at most :data:`CHUNK` (< 64), and never one token of a
single stream (the previous token is evaluated again instead). Under these rules every token takes
the same kernels whatever the batch, the order, the neighbours or the thread count (matrix products
compute each output element on its own), which tests/test_backend_llamacpp.py checks bit for bit.

Speed: a wave of up to ``n_seq - 1`` prompts shares its longest common prefix, evaluated once in
stream 0 (kept between waves, so consecutive waves reuse it), copied to the prompts' streams with
``llama_memory_seq_cp`` (llama.cpp copies a stream's buffer), and the suffixes are evaluated side by
side in one decode per chunk. Options of several tokens are scored in the prompt's own stream, one
option per round, all prompts of the wave together, and rewound with ``llama_memory_seq_rm``.
"""

from __future__ import annotations

import math

import numpy as np

# Tokens per stream per decode: below the flash-attention tile (64 queries), so no decode of ours ever
# takes the tiled kernel; 32 keeps a decode of 8 streams at 256 tokens.
CHUNK = 32
# Cells per stream are sized to the longest sequence of a call, in these steps (a new size re-creates
# the context; the size of the buffer does not change results: only used cells are read).
CTX_STEP = 256


def idle_cpu_threads() -> int:
    """CPU threads for a spin-waiting thread pool (llama.cpp's OpenMP workers): the cores this process
    may use minus the 1-minute load average, rounded, at least 1. On an idle machine that is every
    core; on a busy one fewer, because spinning workers that share a core with another job wait on each
    other at every barrier (measured on 2 shared cores: 24 s for a 57-token prompt with 2 threads, 1.5 s
    with 1). Choice scores do not depend on it (the llama.cpp scorer is thread-count invariant, tested);
    a generation over 512 or more cells could (llama.cpp's split-KV attention reduces per thread)."""
    import os

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return max(1, min(cores, int(cores - load + 0.5)))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Natural-log softmax in float64 of one logits row (shape (n_vocab,))."""
    x = logits.astype(np.float64)
    top = x.max()
    return x - top - math.log(np.exp(x - top).sum())


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class MultiSequenceScorer:
    """Scores (prompt, options) token sequences on a llama.cpp model in a context of its own.

    ``llama_cpp``: the imported module; ``model``: a ``llama_model_p`` (e.g. ``Llama._model.model``);
    ``n_seq``: streams of the context (stream 0 holds the shared prefix, so ``n_seq - 1`` prompts run
    side by side); ``n_threads``: CPU threads; ``max_ctx``: the most tokens one sequence may hold.
    """

    def __init__(self, llama_cpp, model, n_vocab: int, n_seq: int = 8, n_threads: int | None = None,
                 max_ctx: int = 4096):
        if n_seq < 2:
            raise ValueError("n_seq must be at least 2 (stream 0 holds the shared prefix)")
        self.L = llama_cpp
        self.model = model
        self.n_vocab = n_vocab
        self.n_seq = n_seq
        self.n_threads = n_threads or idle_cpu_threads()
        self.max_ctx = max_ctx
        self.ctx = None
        self.mem = None
        self.ctx_per_seq = 0
        self.batch = None
        self.contents: list[list[int]] = []  # the tokens each stream holds, positions 0..n-1
        self.tokens_evaluated = 0  # every token decoded, re-evaluated ones included (bench/)
        self.decodes = 0

    # ---------- context ----------
    def _ensure_context(self, longest: int) -> None:
        if longest > self.max_ctx:
            raise ValueError(f"sequence of {longest} tokens exceeds the context of {self.max_ctx}")
        need = min(self.max_ctx, CTX_STEP * math.ceil(longest / CTX_STEP))
        if self.ctx is not None and need <= self.ctx_per_seq:
            return
        self.close()
        L = self.L
        p = L.llama_context_default_params()
        p.n_seq_max = self.n_seq
        p.kv_unified = False
        p.n_ctx = need * self.n_seq  # llama.cpp gives each of the n_seq streams n_ctx / n_seq cells
        p.n_batch = p.n_ubatch = CHUNK * self.n_seq  # one decode of ours is one ubatch: llama.cpp never re-splits it
        p.n_threads = p.n_threads_batch = self.n_threads
        p.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED
        p.no_perf = True
        ctx = L.llama_init_from_model(self.model, p)
        if not ctx:
            raise RuntimeError("llama.cpp could not create the scoring context")
        self.ctx, self.mem, self.ctx_per_seq = ctx, L.llama_get_memory(ctx), need
        self.batch = L.llama_batch_init(CHUNK * self.n_seq, 0, 1)
        self.contents = [[] for _ in range(self.n_seq)]

    def close(self) -> None:
        if self.batch is not None:
            self.L.llama_batch_free(self.batch)
            self.batch = None
        if self.ctx is not None:
            self.L.llama_free(self.ctx)
            self.ctx = self.mem = None

    # ---------- stream operations ----------
    def _truncate(self, stream: int, n: int) -> None:
        if len(self.contents[stream]) > n:
            self.L.llama_memory_seq_rm(self.mem, stream, n, -1)
            del self.contents[stream][n:]

    def _copy(self, src: int, dst: int) -> None:
        self.L.llama_memory_seq_cp(self.mem, src, dst, -1, -1)  # cross-stream: the whole buffer is copied
        self.contents[dst] = list(self.contents[src])

    def _extend(self, items: list[tuple[int, list[int], set[int]]]) -> dict[tuple[int, int], np.ndarray]:
        """Append ``tokens`` to each ``stream`` (items: (stream, tokens, positions whose next-token
        log-probabilities are wanted)). Returns {(stream, position): log-probabilities (n_vocab,)}.
        Decodes in rounds that give every active stream the same number of tokens (<= CHUNK)."""
        L = self.L
        out: dict[tuple[int, int], np.ndarray] = {}
        pending = [(s, list(toks), set(want)) for s, toks, want in items if toks]
        while pending:
            step = min(CHUNK, min(len(t) for _, t, _ in pending))
            rows = []  # (stream, position, token, wants logits)
            for s, toks, want in pending:
                start = len(self.contents[s])
                for j, tok in enumerate(toks[:step]):
                    rows.append((s, start + j, tok, start + j in want))
            if len(pending) == 1 and step == 1 and rows[0][1] > 0:
                # One query in one stream may take the split-KV kernel: evaluate the previous token again.
                s, pos = rows[0][0], rows[0][1]
                prev = self.contents[s][pos - 1]
                self._truncate(s, pos - 1)
                rows.insert(0, (s, pos - 1, prev, False))
            b = self.batch
            for i, (s, pos, tok, logits) in enumerate(rows):
                b.token[i] = tok
                b.pos[i] = pos
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = s
                b.logits[i] = logits
            b.n_tokens = len(rows)
            rc = L.llama_decode(self.ctx, b)
            if rc != 0:
                raise RuntimeError(f"llama_decode failed with {rc}")
            self.decodes += 1
            self.tokens_evaluated += len(rows)
            for i, (s, pos, tok, logits) in enumerate(rows):
                self.contents[s].append(tok)
                if logits:
                    ptr = L.llama_get_logits_ith(self.ctx, i)
                    out[(s, pos)] = log_softmax(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)))
            pending = [(s, toks[step:], want) for s, toks, want in pending if len(toks) > step]
        return out

    # ---------- scoring ----------
    def score(self, prompts: list[list[int]], options: list[list[list[int]]],
              on_done=None) -> list[list[float]]:
        """Sum of log P(option tokens | prompt) per option, for each prompt.

        ``prompts``: token ids per request (each non-empty); ``options``: per request, the token ids of
        each option (each non-empty). Returns per request one float per option (natural log). The
        value of a request does not depend on the other requests or their order. ``on_done(n)`` is
        called after each wave with the number of requests it finished."""
        if not prompts:
            return []
        longest = max(len(p) + max(len(o) for o in opts) for p, opts in zip(prompts, options))
        self._ensure_context(longest)
        results: list[list[float] | None] = [None] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: prompts[i])  # neighbours share prefixes
        width = self.n_seq - 1
        for w in range(0, len(order), width):
            wave = order[w : w + width]
            self._score_wave(wave, prompts, options, results)
            if on_done is not None:
                on_done(len(wave))
        return results  # type: ignore[return-value]

    def _score_wave(self, wave, prompts, options, results) -> None:
        # The shared prefix, leaving every prompt at least one token of its own (its logits).
        shared = min(len(prompts[i]) - 1 for i in wave)
        for i in wave[1:]:
            shared = min(shared, common_prefix(prompts[wave[0]], prompts[i]))
        prefix = prompts[wave[0]][:shared]
        self._truncate(0, common_prefix(self.contents[0], prefix))
        self._extend([(0, prefix[len(self.contents[0]):], set())])
        streams = list(range(1, len(wave) + 1))
        for s in streams:
            if self.contents[0]:
                self._copy(0, s)
            else:
                self._truncate(s, 0)
        logp = self._extend([(s, prompts[i][shared:], {len(prompts[i]) - 1}) for s, i in zip(streams, wave)])
        scores = {i: [float(logp[(s, len(prompts[i]) - 1)][o[0]]) for o in options[i]] for s, i in zip(streams, wave)}
        # Options of several tokens: round k scores the k-th such option of every prompt of the wave.
        rounds = max(sum(len(o) > 1 for o in options[i]) for i in wave)
        for k in range(rounds):
            items, picked = [], []
            for s, i in zip(streams, wave):
                multi = [j for j, o in enumerate(options[i]) if len(o) > 1]
                if k < len(multi):
                    j, n = multi[k], len(prompts[i])
                    opt = options[i][j]
                    items.append((s, opt[:-1], set(range(n, n + len(opt) - 1))))
                    picked.append((s, i, j))
            logp = self._extend(items)
            for s, i, j in picked:
                opt, n = options[i][j], len(prompts[i])
                scores[i][j] += sum(float(logp[(s, n + t)][opt[t + 1]]) for t in range(len(opt) - 1))
                self._truncate(s, n)
        for i in wave:
            results[i] = scores[i]
