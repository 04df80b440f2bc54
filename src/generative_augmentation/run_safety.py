"""Hooks that keep runs from hurting each other or leaving debris: checked parameters before any node, one run
at a time per data folder, MLflow set up by one process at a time, killed runs marked as such and linked from
the run that resumes them, readable run names, and an MLflow store that follows the project when it moves."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl
from kedro.io import MemoryDataset
from mlflow.tracking import MlflowClient

from generative_augmentation.validation import check_parameters

logger = logging.getLogger(__name__)

RUN_LOCK = ".kedro-run.lock"
LAST_RUN = ".last-mlflow-run.json"
SETUP_LOCK = ".mlflow-setup.lock"
SETUP_TIMEOUT_S = 120


class LockHeldError(RuntimeError):
    """Another process holds the lock."""


def acquire_lock(path: Path, blocking: bool, timeout: float = SETUP_TIMEOUT_S) -> Any:
    """An exclusive lock on ``path`` (released when the returned handle closes or the process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if not blocking or time.monotonic() > deadline:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise LockHeldError(holder) from None
            time.sleep(0.2)
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} ({' '.join(sys.argv[:4])}), since {time.strftime('%Y-%m-%d %H:%M:%S')}")
    handle.flush()
    return handle


def release_lock(handle: Any) -> None:
    if handle is not None and not handle.closed:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def relocate_mlflow_store(database: Path, project: Path) -> int:
    """Point the artifact locations of a sqlite MLflow store at ``project/mlruns`` when the project was moved or
    copied (MLflow stores absolute paths); returns how many experiments were re-pointed."""
    if not database.is_file():
        return 0
    target = (project / "mlruns").resolve().as_uri()
    with sqlite3.connect(database) as db:
        try:
            rows = db.execute("select experiment_id, artifact_location from experiments").fetchall()
        except sqlite3.OperationalError:  # an empty file: MLflow creates the tables
            return 0
        moved = 0
        for experiment_id, location in rows:
            marker = location.rfind("/mlruns/") if location else -1
            if marker < 0:
                continue
            old_root = location[:marker] + "/mlruns"
            new_root = target if location.startswith("file:") else str((project / "mlruns").resolve())
            if old_root == new_root:
                continue
            tail = len(old_root) + 1
            db.execute(
                "update experiments set artifact_location = ? || substr(artifact_location, ?) where experiment_id = ?",
                (new_root, tail, experiment_id),
            )
            db.execute(
                "update runs set artifact_uri = ? || substr(artifact_uri, ?) "
                "where experiment_id = ? and artifact_uri like ?",
                (new_root, tail, experiment_id, old_root + "%"),
            )
            moved += 1
    if moved:
        logger.warning("MLflow store %s pointed at another copy of the project: re-pointed to %s", database, new_root)
    return moved


OURS = "GENERATIVE_AUGMENTATION_TRACKING_URI"  # marks a MLFLOW_TRACKING_URI this project set, not the user


def use_project_store(context: Any) -> Path | None:
    """Point MLflow at ``<project>/mlflow.db`` unless mlflow.yml or the user's MLFLOW_TRACKING_URI names another
    store; returns the sqlite file when it is the project's."""
    configured = (context.config_loader["mlflow"].get("server") or {}).get("mlflow_tracking_uri")
    current = os.environ.get("MLFLOW_TRACKING_URI")
    if configured is not None or (current is not None and current != os.environ.get(OURS)):
        return None
    database = (Path(context.project_path) / "mlflow.db").resolve()
    os.environ["MLFLOW_TRACKING_URI"] = os.environ[OURS] = f"sqlite:///{database}"
    return database


class MlflowSetupLockHooks:
    """Hold a lock while kedro-mlflow creates or migrates the store: two runs starting together on a fresh store
    otherwise die in MLflow's schema migration. Also re-point a moved project's store (see relocate_mlflow_store)."""

    def __init__(self) -> None:
        self.handle = None

    @hook_impl(tryfirst=True)
    def after_context_created(self, context) -> None:
        database = use_project_store(context)
        if database is None:
            return
        self.handle = acquire_lock(database.with_name(SETUP_LOCK), blocking=True)
        relocate_mlflow_store(database, Path(context.project_path))


class MlflowSetupUnlockHooks:
    """Release the setup lock once every other ``after_context_created`` (kedro-mlflow's) has run."""

    def __init__(self, setup: MlflowSetupLockHooks) -> None:
        self.setup = setup

    @hook_impl(trylast=True)
    def after_context_created(self, context) -> None:
        release_lock(self.setup.handle)
        self.setup.handle = None


class RunSafetyHooks:
    """Checked parameters, one run per data folder, signals that end the MLflow run as KILLED, named runs."""

    def __init__(self) -> None:
        self.context: Any = None
        self.lock = None
        self.previous_handlers: dict[int, Any] = {}

    @hook_impl
    def after_context_created(self, context) -> None:
        self.context = context

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any]) -> None:
        parameters = self.context.config_loader["parameters"]
        check_parameters(parameters)
        data_dir = self.data_dir()
        try:
            self.lock = acquire_lock(data_dir / RUN_LOCK, blocking=False)
        except LockHeldError as held:
            raise RuntimeError(
                f"Another kedro run is using {data_dir} ({held}). Two runs in one data folder would overwrite each "
                "other's outputs: wait for it to finish, or run the other study in its own environment (--env)"
            ) from None
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.previous_handlers[signum] = signal.signal(signum, self.on_signal)

    def data_dir(self) -> Path:
        data_dir = Path(self.context.config_loader["globals"].get("data_dir", "data"))
        return data_dir if data_dir.is_absolute() else Path(self.context.project_path) / data_dir

    def on_signal(self, signum: int, frame: Any) -> None:
        """End the open MLflow runs as KILLED and release the lock, then stop as the signal asks."""
        logger.error(
            "Received %s: marking the MLflow run killed; `kedro run --only-missing-outputs` resumes",
            signal.Signals(signum).name,
        )
        while mlflow.active_run() is not None:
            mlflow.end_run(status="KILLED")
        self.finish()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        sys.exit(128 + signum)

    def finish(self) -> None:
        release_lock(self.lock)
        self.lock = None
        for signum, handler in self.previous_handlers.items():
            signal.signal(signum, handler)
        self.previous_handlers = {}

    @hook_impl
    def after_pipeline_run(self) -> None:
        self.finish()

    @hook_impl
    def on_pipeline_error(self) -> None:
        self.finish()


class RunNamingHooks:
    """Readable MLflow run names and provenance tags, and a link from a resumed run to the one it resumes."""

    def __init__(self, safety: RunSafetyHooks) -> None:
        self.safety = safety

    @hook_impl
    def after_catalog_created(self, catalog) -> None:
        """Hand the run's provenance to the report through the catalog (dataset ``run_provenance``)."""
        context = self.safety.context
        if context is None:
            return
        record = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "environment": context.env or "retinamnist",
            **provenance(context),
            "classifier threads": "1 each",
        }
        if "run_provenance" in catalog:  # declared in conf/base/catalog.yml, which gives it its kedro-viz layer
            catalog.save("run_provenance", record)
        else:
            catalog["run_provenance"] = MemoryDataset(record, copy_mode="assign")

    @hook_impl(trylast=True)  # after kedro-mlflow has opened the run
    def before_pipeline_run(self, run_params: dict[str, Any]) -> None:
        run = mlflow.active_run()
        if run is None or self.safety.context is None:
            return
        context = self.safety.context
        pipelines = run_params.get("pipeline_names") or ["all"]
        env = context.env or "retinamnist"
        name = f"{env} · {'+'.join(pipelines)} · {time.strftime('%Y-%m-%d %H:%M')}"
        tags = {"mlflow.runName": name, "env": env, "pipelines": ",".join(pipelines), **provenance(context)}
        mlflow.set_tags(tags)
        self.link_previous(run.info.run_id)

    def link_previous(self, run_id: str) -> None:
        """Tag this run with the previous run of the data folder when that one was killed, failed or left open."""
        record = self.safety.data_dir() / LAST_RUN
        if record.is_file():
            previous = json.loads(record.read_text()).get("run_id")
            client = MlflowClient()
            try:
                status = client.get_run(previous).info.status if previous else None
            except mlflow.exceptions.MlflowException:
                status = None
            if status == "RUNNING":  # a kill -9 left it open: nothing else will ever close it
                client.set_terminated(previous, status="KILLED")
                status = "KILLED"
            if status in ("KILLED", "FAILED"):
                mlflow.set_tag("resumed_from", previous)
                logger.info("This run resumes MLflow run %s (%s)", previous, status)
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"run_id": run_id}))


def provenance(context: Any) -> dict[str, str]:
    """The commit, a digest of the parameters and the torch threads, to tell a trial run from a default one."""
    parameters = context.config_loader["parameters"]
    digest = hashlib.sha1(json.dumps(parameters, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def git(*arguments: str) -> str:
        done = subprocess.run(
            ["git", *arguments], cwd=context.project_path, capture_output=True, text=True, timeout=5, check=False
        )
        return done.stdout.strip()

    try:
        commit, dirty = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    import torch

    return {
        "commit": (commit + ("+changes" if dirty else "")) or "unknown",
        "parameters_digest": digest,
        "torch_threads": str(torch.get_num_threads()),
    }
