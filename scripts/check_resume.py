"""Kill -9 a tiny study at four points, resume it with `kedro run --only-missing-outputs`, and compare every
output with an uninterrupted run's, byte for byte.

    PYTHONPATH=src:. .venv/bin/python scripts/check_resume.py [--workdir DIR] [--keep]

On two throw-away copies of the project (``tests/test_project_run.make_project``: conf/ and a tiny 3-class
MedMNIST-style file), with the tiny runtime parameters of the test suite (``TINY``) made long enough to be
interrupted (a generator trained 60 steps with a checkpoint every 10, a pool larger than one 256-image sampling
chunk, classifiers trained 3,000 steps):

1. ``kedro run --config=check.yml`` runs the whole study uninterrupted: the reference;
2. in a fresh copy, ``kedro run --config=check.yml`` is killed with SIGKILL while ``data_preparation`` saves the real
   images; ``kedro run --config=check.yml --only-missing-outputs`` resumes it and is killed in turn while the DDPM
   trains (after its first checkpoint), the next one while the pool is sampled (after its first chunk), the next
   one while the second arm's classifiers train; a last one runs to the end;
3. the manifest, every real and synthetic PNG, the synthetic manifest, the generator's weights, the classifiers'
   weights, test predictions and test scores and the study's tables are compared with the reference's.

The kill moments are found by a watcher that polls the data folder (checkpoint folders, sample chunks, partial
folders) and the run's log lines, which a reader thread collects, so a line that never comes cannot hang the
check. Prints two Markdown tables (kill points; artefacts compared) and the MLflow run statuses. Exit status 0
when every resume completed and every compared file is identical.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "src")]

from tests.test_project_run import TINY, make_project  # noqa: E402

KEDRO = Path(sys.executable).with_name("kedro")
WAIT_S = 900  # the longest a run may take to reach its kill point or its end


def merged(base: dict, changes: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        out[key] = merged(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


# TINY, long enough in the places a kill must land in: the generator trains 60 steps (a checkpoint every 10), the
# pool (2 minority classes x 16 x their train count x 1.25) is larger than one sampling chunk (256 images), and each
# classifier trains 3,000 steps (long enough, even on an idle machine, to be killed while it trains).
CHECK = merged(
    TINY,
    {
        "generation": {
            "ddpm": {"train_steps": 60, "checkpoint_every": 10, "sampling": {"steps": 6}},
            "pool": {"multiple": 16.0},
        },
        "classifier": {"steps": 3000, "eval_every": 1000},
    },
)


# --- one `kedro run` -------------------------------------------------------------------------------------------------


class Run:
    """``kedro run`` in ``project`` as a subprocess in its own process group; a reader thread keeps its output."""

    def __init__(self, project: Path, extra: list[str], log: Path) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]),
            "PYTHONUNBUFFERED": "1",
            "COLUMNS": "500",  # rich wraps log lines to the terminal width; one record per line here
        }
        env.pop("MLFLOW_TRACKING_URI", None)
        self.command = ["kedro", "run", "--config=check.yml", *extra]
        self.lines: list[str] = []
        self.log = log
        self.process = subprocess.Popen(
            [str(KEDRO), *self.command[1:]],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: what it leaves behind can be found
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        with self.log.open("w") as out:
            for line in self.process.stdout:
                self.lines.append(line.rstrip("\n"))
                out.write(line)
                out.flush()

    def saw(self, text: str, start: int = 0) -> int:
        """How many lines (from line ``start``) contain ``text``."""
        return sum(text in line for line in self.lines[start:])

    def wait_for(self, trigger: Callable[[Run], str | None], timeout: float = WAIT_S) -> str | None:
        """Poll ``trigger`` every 5 ms until it describes its moment, the run ends, or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            moment = trigger(self)
            if moment:
                return moment
            if self.process.poll() is not None:
                return trigger(self)
            time.sleep(0.005)
        return None

    def kill(self) -> list[int]:
        """SIGKILL the kedro process (only it, as `kill -9 PID` does); returns the pids it left running."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        time.sleep(0.5)
        return group_members(self.process.pid)

    def finish(self, timeout: float = WAIT_S) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            return self.process.wait()


def group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (from /proc; zombies left out)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            members.append(int(stat.parent.name))
    return sorted(members)


def describe(pids: list[int]) -> str:
    """What the processes are (loky worker, loky resource tracker, ...), from their command lines."""
    kinds = []
    for pid in pids:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "resource_tracker" in command:
            kinds.append("loky resource tracker")
        else:
            kinds.append("loky worker" if "loky" in command else command[:60])
    return ", ".join(f"{kinds.count(kind)} {kind}" for kind in sorted(set(kinds)))


def end_processes(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# --- the kill points -----------------------------------------------------------------------------------------------


def files(folder: Path, pattern: str = "*") -> list[Path]:
    return sorted(path for path in folder.rglob(pattern) if path.is_file()) if folder.is_dir() else []


@dataclass
class KillPoint:
    name: str
    trigger: Callable[[Path, Run], str | None]
    left: Callable[[Path], str]
    resumed: Callable[[Path, Run], str]  # evidence, in the resuming run's log, that it resumed from what was left
    artefacts: list[str]
    moment: str | None = None
    left_on_disk: str = ""
    orphans: list[int] = field(default_factory=list)
    orphan_kinds: str = ""
    evidence: str = ""
    resumed_ok: bool = False


def saving_real_images(project: Path, run: Run) -> str | None:
    partial = project / "data/03_primary/.partial-images"
    if partial.is_dir():
        return f"`.partial-images/` appeared ({len(files(partial, '*.png'))} PNGs written)"
    if run.saw("Saving data to real_images"):
        return "log: `Saving data to real_images`"
    return None


def left_real_images(project: Path) -> str:
    primary = project / "data/03_primary"
    partial, final = primary / ".partial-images", primary / "images"
    parts = [
        f"manifest.parquet {'saved' if (primary / 'manifest.parquet').is_file() else 'absent'}",
        f"`images/` {'with ' + str(len(files(final, '*.png'))) + ' PNGs' if final.is_dir() else 'absent'}",
    ]
    if partial.is_dir():
        parts.append(f"`.partial-images/` with {len(files(partial, '*.png'))} PNGs")
    return "; ".join(parts)


def resumed_real_images(project: Path, run: Run) -> str:
    ran = run.saw("Running node: write_working_images")  # kedro logs the node name without its namespace
    count = len(files(project / "data/03_primary/images", "*.png"))
    partial = (project / "data/03_primary/.partial-images").exists()
    ok = ran == 1 and count > 0 and not partial
    left = "a partial folder left" if partial else "no partial folder left"
    return f"{'yes' if ok else 'NO'}: `write_working_images` ran again ({ran}x), {count} PNGs, {left}"


def checkpoints(project: Path) -> list[Path]:
    root = project / "data/06_models/generator_checkpoints"
    return sorted(path for path in root.glob("ddpm-*/step-*") if (path / "checkpoint.json").is_file())


def generator_training(project: Path, run: Run) -> str | None:
    done = checkpoints(project)
    return f"checkpoint `{done[-1].name}` appeared" if done else None


def left_generator(project: Path) -> str:
    done = [path.name for path in checkpoints(project)]
    saved = files(project / "data/06_models/generator", "*.json")
    names = ", ".join(f"`{name}`" for name in done) or "none"
    return f"checkpoint(s) {names}; generator {'saved' if saved else 'absent'}"


def resumed_generator(project: Path, run: Run) -> str:
    line = next((line for line in run.lines if "Resuming from" in line), "")
    found = re.search(r"\(step (\d+)\)", line)  # the record may carry rich's file:line column after it
    if not found:
        return "NO: trained from step 0"
    step = int(found.group(1))
    return f"yes: `Resuming from .../step-{step:08d} (step {step})`"


def sample_chunks(project: Path) -> list[Path]:
    return files(project / "data/06_models/generator_checkpoints", "chunk-*.npy")


def pool_sampling(project: Path, run: Run) -> str | None:
    chunks = sample_chunks(project)
    return f"sample chunk `{chunks[0].name}` appeared" if chunks else None


def left_pool(project: Path) -> str:
    synthetic = project / "data/07_model_output/synthetic"
    return (
        f"{len(sample_chunks(project))} chunk(s) of 256 images; "
        f"`synthetic/` {'present' if synthetic.is_dir() else 'absent'}; generator saved"
    )


def resumed_pool(project: Path, run: Run) -> str:
    kept = run.saw("was sampled before the interruption: kept")
    return f"yes: {kept} chunk(s) kept, the rest sampled" if kept else "NO: no chunk kept"


TRAINING = "Training 2 classifiers for"


def classifier_training(project: Path, run: Run) -> str | None:
    started = [line for line in run.lines if TRAINING in line]
    if len(started) >= 2:  # the second arm: the first one's outputs are on disk by then
        time.sleep(2.0)  # its workers start and train
        arm = started[1].split(TRAINING, 1)[1].split(",")[0].strip()
        return f"log: `{TRAINING} {arm}` + 2 s"
    return None


def left_classifiers(project: Path) -> str:
    arms = sorted(path.name.removesuffix(".safetensors") for path in (project / "data/06_models/classifiers").glob("*"))
    scored = sorted(path.name.removesuffix(".csv") for path in (project / "data/08_reporting/test_scores").glob("*"))
    return f"classifiers of {arms or 'no arm'}; test scores of {scored or 'no arm'}"


def resumed_classifiers(project: Path, run: Run) -> str:
    trained = [line.split(TRAINING, 1)[1].split(",")[0].strip() for line in run.lines if TRAINING in line]
    return f"yes: retrained only {trained}" if trained else "NO: no classifier trained"


KILL_POINTS = [
    KillPoint(
        "saving the real images (`data_preparation.write_working_images`)",
        saving_real_images,
        left_real_images,
        resumed_real_images,
        ["manifest", "real PNGs"],
    ),
    KillPoint(
        "training the DDPM (`generation.train_generator`)",
        generator_training,
        left_generator,
        resumed_generator,
        ["generator weights", "generator record", "generator training log"],
    ),
    KillPoint(
        "sampling the pool (`generation.generate_synthetic_pool`)",
        pool_sampling,
        left_pool,
        resumed_pool,
        ["synthetic manifest", "synthetic PNGs"],
    ),
    KillPoint(
        "training the classifiers (`<arm>.train_classifier`, second arm)",
        classifier_training,
        left_classifiers,
        resumed_classifiers,
        ["classifier weights", "test predictions", "test scores", "study tables"],
    ),
]


# --- what is compared ----------------------------------------------------------------------------------------------


def latest_versions(root: Path, pattern: str) -> list[Path]:
    """The newest version of each versioned dataset matching ``root/pattern`` (``<name>/<timestamp>/<name>``)."""
    newest = []
    for dataset in sorted(root.glob(pattern)):
        versions = sorted(dataset.glob("*/" + dataset.name))
        if versions:
            newest.append(versions[-1])
    return newest


def generator_files(project: Path) -> dict[str, bytes]:
    (folder,) = latest_versions(project / "data/06_models", "generator")
    return {str(path.relative_to(folder)): path.read_bytes() for path in files(folder) if path.suffix != ".json"}


def generator_record(project: Path) -> dict[str, bytes]:
    """generator.json without its one timing (steps per second); everything else byte for byte."""
    (folder,) = latest_versions(project / "data/06_models", "generator")
    record = json.loads((folder / "generator.json").read_text())
    record["training"].pop("steps_per_second", None)
    return {"generator.json (less steps_per_second)": json.dumps(record, sort_keys=True).encode()}


def tree(project: Path, folder: str, pattern: str = "*") -> dict[str, bytes]:
    root = project / folder
    return {str(path.relative_to(root)): path.read_bytes() for path in files(root, pattern)}


def versioned(project: Path, folder: str, pattern: str) -> dict[str, bytes]:
    return {path.parent.parent.name: path.read_bytes() for path in latest_versions(project / folder, pattern)}


ARTEFACTS: dict[str, Callable[[Path], dict[str, bytes]]] = {
    "manifest": lambda p: tree(p, "data/03_primary", "manifest.parquet"),
    "real PNGs": lambda p: tree(p, "data/03_primary/images", "*.png"),
    "generator weights": generator_files,
    "generator record": generator_record,
    "generator training log": lambda p: versioned(p, "data/08_reporting/generation", "training_log.csv"),
    "synthetic manifest": lambda p: tree(p, "data/07_model_output", "synthetic_manifest.parquet"),
    "synthetic PNGs": lambda p: tree(p, "data/07_model_output/synthetic", "*.png"),
    "classifier weights": lambda p: versioned(p, "data/06_models/classifiers", "*.safetensors"),
    "test predictions": lambda p: tree(p, "data/07_model_output/test_predictions", "*.parquet"),
    "test scores": lambda p: versioned(p, "data/08_reporting/test_scores", "*.csv"),
    "study tables": lambda p: versioned(p, "data/08_reporting", "*.csv"),
}


def compare(reference: Path, resumed: Path, name: str) -> tuple[int, list[str]]:
    """(files compared, names that differ or are missing on one side)."""
    first, second = ARTEFACTS[name](reference), ARTEFACTS[name](resumed)
    differing = sorted(key for key in first.keys() | second.keys() if first.get(key) != second.get(key))
    return len(first.keys() | second.keys()), differing


def mlflow_statuses(project: Path) -> str:
    with sqlite3.connect(project / "mlflow.db") as db:
        rows = db.execute("select status, count(*) from runs where name not like '%replicate%' group by status")
        parents = dict(rows.fetchall())
        nested = dict(
            db.execute("select status, count(*) from runs where name like '%replicate%' group by status").fetchall()
        )
        linked = db.execute("select count(*) from tags where key = 'resumed_from'").fetchone()[0]
    return f"parent runs {parents}, nested replicate runs {nested}, runs tagged resumed_from: {linked}"


# --- the check -----------------------------------------------------------------------------------------------------


def new_project(root: Path) -> Path:
    project = make_project(root)
    (project / "check.yml").write_text(yaml.safe_dump({"run": {"params": CHECK}}, sort_keys=False))
    return project


def main() -> int:  # noqa: PLR0915 - one straight story, told in order
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="where the project copies go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the project copies and logs")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="check_resume-"))
    workdir.mkdir(parents=True, exist_ok=True)
    left_running: list[int] = []
    started = time.monotonic()
    try:
        reference = new_project(workdir / "reference")
        print(f"Reference: an uninterrupted run in {reference}", flush=True)
        run = Run(reference, [], workdir / "reference.log")
        code = run.finish()
        left_running += group_members(run.process.pid)
        if code != 0:
            print("\n".join(run.lines[-40:]))
            print(f"The uninterrupted run failed (exit status {code}); log: {run.log}")
            return 1
        reference_s = time.monotonic() - started

        project = new_project(workdir / "killed")
        print(f"Killed and resumed: {project}", flush=True)
        run = Run(project, [], workdir / "run-0.log")
        for index, point in enumerate(KILL_POINTS, start=1):
            point.moment = run.wait_for(lambda r, p=point: p.trigger(project, r))
            if point.moment is None or run.process.poll() is not None:
                print(f"Kill point {index} ({point.name}) was not reached; log: {run.log}", flush=True)
                point.left_on_disk = "(not reached)"
                code = run.finish()
                break
            point.orphans = run.kill()
            point.orphan_kinds = describe(point.orphans)
            point.left_on_disk = point.left(project)
            print(f"Killed at {point.name}: {point.moment}; left: {point.left_on_disk}", flush=True)
            left_running += point.orphans
            run = Run(project, ["--only-missing-outputs"], workdir / f"run-{index}.log")
            if index < len(KILL_POINTS):  # the resuming run reaches the next kill point: it resumed this one
                nxt = KILL_POINTS[index]
                run.wait_for(lambda r, p=nxt: p.trigger(project, r))
            else:
                code = run.finish()
            point.evidence = point.resumed(project, run)
            point.resumed_ok = point.evidence.startswith("yes")
        left_running += group_members(run.process.pid)
        final_code = run.process.returncode
        if final_code != 0:
            print("\n".join(run.lines[-40:]))

        total_files, total_differing, rows = 0, 0, []
        for point in KILL_POINTS:
            compared, differing = 0, []
            for name in point.artefacts:
                count, bad = compare(reference, project, name)
                compared += count
                differing += [f"{name}: {key}" for key in bad]
            total_files += compared
            total_differing += len(differing)
            identical = "yes" if not differing and compared else f"NO ({len(differing)} differ: {differing[:3]})"
            orphans = f"; still running after the kill: {point.orphan_kinds}" if point.orphans else ""
            rows.append(
                f"| {point.name} | {point.moment or 'not reached'} | {point.left_on_disk}{orphans} | "
                f"{point.evidence or 'NO'} | {identical}, {compared} files |"
            )

        print()
        elapsed = time.monotonic() - started
        print(f"`PYTHONPATH=src:. .venv/bin/python scripts/check_resume.py`: {elapsed:.0f} s in all, the uninterrupted")
        print(f"run {reference_s:.0f} s; the last resumed run's exit status {final_code}")
        print()
        print("| kill -9 while | detected by | left on disk | resumed OK? | identical to uninterrupted? |")
        print("|---|---|---|---|---|")
        print("\n".join(rows))
        print()
        print("| artefact | files compared | identical to uninterrupted |")
        print("|---|---|---|")
        for name in ARTEFACTS:
            count, bad = compare(reference, project, name)
            print(f"| {name} | {count} | {'yes' if not bad else 'NO: ' + ', '.join(bad[:5])} |")
        print()
        print(f"MLflow, killed copy: {mlflow_statuses(project)}")
        print(f"Processes the kills left running (ended by this script): {sorted(set(left_running)) or 'none'}")
        ok = final_code == 0 and all(point.resumed_ok for point in KILL_POINTS) and total_differing == 0
        print(f"\n{'OK' if ok else 'FAILED'}: {total_files} files compared, {total_differing} differ")
        return 0 if ok else 1
    finally:
        end_processes(sorted(set(left_running)))
        if args.keep or args.workdir:
            print(f"Project copies and logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
