"""The paper's trade-off curve in miniature (Table 1, Fig. 7): accuracy against
FLOPs for SACT at several tau, ACT, non-adaptive ResNets with fewer units per
block and, for the detector, one SACT model's test-time halting offsets.

Two ladders (:class:`Task`): the detector (box AP against feature-extractor
FLOPs, Table 1) and the classifier (top-1 against the whole network's FLOPs,
Fig. 7; no offset curve: :func:`_evaluate_offset` evaluates detectors only).

Each member of the ladder is trained and evaluated by ``tools/train_net.py`` in
its own process and output directory, ``jobs`` of them side by side (each on
one thread when there are several), so a member that diverges is marked
failed and the rest go on, and a killed ladder resumes: finished members are
skipped, an interrupted one continues from its last checkpoint. The state is
``tradeoff.json``, rewritten atomically by this process after every member,
and so are the table ``tradeoff.md`` and the plot ``tradeoff.png``, from the
members done so far (:func:`write_report`).

Progress: a line when each member starts (member i of n, where its log is)
and, while members train, a line every minute for each with its iteration and
the time left (read from the ``metrics.json`` it writes), for it and for the ladder.
"""
import json
import logging
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from sact_det.config import get_config_file
from sact_det.data import ensure_synthetic, ensure_synthetic_cls
from sact_det.utils.errors import InputFileNotFoundError, InputValueError
from sact_det.utils.files import atomic_path

__all__ = ["Task", "DETECTION", "CLASSIFICATION", "TASKS", "Member", "default_ladder", "Progress", "last_metrics",
           "run_ladder", "summarize", "markdown_table", "informativeness", "write_report", "table_only", "plot",
           "schedule_for", "run_tradeoff"]

logger = logging.getLogger("sact_det")
STATE_FILE = "tradeoff.json"
FAMILIES = ("SACT", "ACT", "ResNet (fewer units)", "SACT + test-time offset")


@dataclass(frozen=True)
class Task:
    """What a ladder trains and measures: its members' config and test sets, the
    results read from a member's ``metrics.json`` and how the table names them,
    its default members and its schedule."""

    name: str
    config: str  # every member's shipped config (sact_det.config.get_config_file)
    datasets: Tuple[str, ...]  # the plot shows the first
    results: Dict[str, str]  # result name -> metrics.json key after the dataset's prefix
    optional_results: Dict[str, str]  # the same, kept when the evaluation reports them
    score: str  # the result tabled and plotted against FLOPs
    score_label: str  # the table's and the plot's name for it
    score_short: str  # in "<score_short> per seed"
    flops_label: str  # the plot's x axis
    ensure_data: Callable[[], str]  # generates the synthetic dataset unless it is there
    taus: Tuple[float, ...]  # SACT members
    act_taus: Tuple[float, ...]  # ACT members
    units: Tuple[Tuple[int, ...], ...]  # plain ResNets: units of res2-res4 (and res5, a fourth count)
    quick_units: Tuple[Tuple[int, ...], ...]
    max_iter: int  # per member; quick: a quarter
    decays: Tuple[float, float]  # SOLVER.STEPS as shares of the training
    warmup: int  # SOLVER.WARMUP_ITERS, at most a ninth of the training
    offsets: Tuple[float, ...]  # the test-time offset curve; empty: none (_evaluate_offset evaluates detectors)
    check_informative: bool  # footer: can the ladder tell its plain networks apart (informativeness)


DETECTION = Task(
    name="detection", config="synthetic/sact_tiny.yaml", datasets=("synthetic_val", "synthetic_val_heldout"),
    results={"AP": "bbox/AP", "AP50": "bbox/AP50", "FLOPs_pct": "sact/FLOPs_pct"},
    # the whole detector, an ACT box head
    optional_results={"detector_FLOPs_pct": "sact/detector_FLOPs_pct", "head_units": "sact/head_units"},
    score="AP", score_label="box AP", score_short="AP",
    flops_label="feature-extractor FLOPs, % of the dense network", ensure_data=ensure_synthetic,
    taus=(0.005, 0.01, 0.02), act_taus=(0.005, 0.02), units=((1, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 6)),
    quick_units=((1, 1, 2), (2, 3, 4)), max_iter=600, decays=(0.78, 0.94), warmup=100,
    offsets=(-2.0, -1.0, 1.0, 2.0, 3.0), check_informative=False)
CLASSIFICATION = Task(
    name="classification", config="synthetic/cls_sact_tiny.yaml",
    datasets=("synthetic_cls_val", "synthetic_cls_val_heldout"),
    results={"top1": "classification/top1", "top5": "classification/top5", "FLOPs_pct": "sact/FLOPs_pct"},
    optional_results={"FLOPs_pct_std": "sact/FLOPs_pct_std"},  # over the images
    score="top1", score_label="top-1 (%)", score_short="top-1",
    # The paper's convention for classifiers (Fig. 7): the whole network, stem to linear layer.
    flops_label="FLOPs, % of the dense network (the whole classifier)", ensure_data=ensure_synthetic_cls,
    taus=(0.005, 0.01, 0.02), act_taus=(0.005, 0.02),
    # res2-res5; the last is the full-depth tiny classifier (ResNet-50's units), the dense reference
    units=((1, 1, 1, 1), (1, 2, 3, 1), (2, 3, 4, 2), (3, 4, 6, 3)), quick_units=((1, 1, 1, 1), (3, 4, 6, 3)),
    # the shipped config's schedule (Base-cls-tiny.yaml)
    max_iter=1500, decays=(0.75, 0.9), warmup=50, offsets=(), check_informative=True)
TASKS = {task.name: task for task in (DETECTION, CLASSIFICATION)}


@dataclass
class Member:
    """One trained model of the ladder (or one offset of the offset curve)."""

    family: str
    label: str  # e.g. "tau=0.01", "units=1-2-3", "offset=+1"
    seed: int
    opts: List[str]  # config overrides
    config: str = "synthetic/sact_tiny.yaml"  # a shipped config (sact_det.config.get_config_file)
    offset: Optional[float] = None  # offset-curve points: evaluated, not trained
    status: str = "pending"  # pending, done, failed
    results: Dict[str, float] = field(default_factory=dict)  # the task's results per dataset (Task.results)
    error: str = ""

    @property
    def name(self) -> str:
        return f"{self.family}_{self.label}_seed{self.seed}".replace(" ", "").replace("(", "").replace(")", "")


def _plain_opts(units: Sequence[int]) -> List[str]:
    """A non-adaptive ResNet running the first ``units`` of res2, res3, res4 (and
    of res5, when there is a fourth count: the classifier's last block)."""
    opts = ["MODEL.SACT.TYPE", "none", "MODEL.SACT.NUM_UNITS", str(list(units[:3]))]
    return opts + (["MODEL.SACT.RES5_NUM_UNITS", str(units[3])] if len(units) > 3 else [])


def default_ladder(seeds: Sequence[int] = (0, 1), quick: bool = False, task: Task = DETECTION,
                   taus: Optional[Sequence[float]] = None, act_taus: Optional[Sequence[float]] = None) -> List[Member]:
    """SACT at three tau, ACT at two (``taus``, ``act_taus``: others), four
    non-adaptive baselines with fewer units per block (the paper's baseline
    family, sec. 4.1), of ``task``; ``quick``: fewer."""
    if taus is None:
        taus = (0.005, 0.02) if quick else task.taus
    if act_taus is None:
        act_taus = (0.01,) if quick else task.act_taus
    members = []
    for seed in seeds:
        members += [Member("SACT", f"tau={tau:g}", seed, ["MODEL.SACT.TYPE", "sact", "MODEL.SACT.TAU", str(tau)],
                           task.config) for tau in taus]
        members += [Member("ACT", f"tau={tau:g}", seed, ["MODEL.SACT.TYPE", "act", "MODEL.SACT.TAU", str(tau)],
                           task.config) for tau in act_taus]
        members += [Member(FAMILIES[2], "units=" + "-".join(map(str, u)), seed, _plain_opts(u), task.config)
                    for u in (task.quick_units if quick else task.units)]
    return members


def offset_members(trained: Member, offsets: Sequence[float]) -> List[Member]:
    """The test-time offset curve of one trained SACT member."""
    return [Member(FAMILIES[3], f"offset={o:+g}", trained.seed, list(trained.opts), trained.config, offset=o)
            for o in offsets]


def _load_state(path: str) -> Tuple[dict, Dict[str, dict]]:
    """(settings, members by name) of a ``tradeoff.json``; empty when there is none."""
    if not os.path.isfile(path):
        return {}, {}
    with open(path) as f:
        state = json.load(f)
    return state["settings"], {m["name"]: m for m in state["members"]}


def _save_state(path: str, members: List[Member], settings: dict) -> None:
    with atomic_path(path) as temporary, open(temporary, "w") as f:
        json.dump({"settings": settings, "members": [dict(asdict(m), name=m.name) for m in members]}, f, indent=1)


def _recorded_task(settings: dict) -> str:
    return settings.get("task", DETECTION.name)  # states written before there was a classification ladder


def _final_results(output_dir: str, datasets: Sequence[str], task: Task = DETECTION) -> Dict[str, float]:
    """The task's results per dataset (``<dataset>/<name>``, :attr:`Task.results`)
    from the last evaluation in metrics.json."""
    with open(os.path.join(output_dir, "metrics.json")) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    results = {}
    for dataset in datasets:
        prefix = f"{dataset}/" if len(datasets) > 1 else ""  # Detectron2 names the dataset only among several
        last = next((m for m in reversed(lines) if prefix + task.results[task.score] in m), None)
        if last is None:
            raise RuntimeError(f"no evaluation on {dataset} in {os.path.join(output_dir, 'metrics.json')}")
        results.update({f"{dataset}/{name}": last[prefix + key] for name, key in task.results.items()})
        results.update({f"{dataset}/{name}": last[prefix + key] for name, key in task.optional_results.items()
                        if prefix + key in last})
    return results


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def last_metrics(path: str) -> Optional[dict]:
    """The last record with an iteration of a ``metrics.json`` being written
    (None before the first; a line cut short by the writer is passed over)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("iteration"), (int, float)):
            return record
    return None


@dataclass
class Progress:
    """Member ``index`` of ``total`` while it trains; ``trainings_after``: the
    trainings still to start after it, ``jobs`` at a time (for the ladder's time left)."""

    index: int
    total: int
    name: str
    max_iter: Optional[int] = None
    trainings_after: int = 0
    jobs: int = 1
    interval_s: float = 60.0  # between two progress lines
    started: float = field(default_factory=time.monotonic)
    shown: Optional[float] = None  # the iteration of the last line
    last_line: Optional[float] = None  # when it was logged (None: the start)

    def line(self, record: dict, elapsed: float) -> str:
        """``[i/n] name: iteration k/N, about T left (the ladder: U)``."""
        iteration = int(record["iteration"]) + 1  # Detectron2 counts from 0
        text = f"[{self.index}/{self.total}] {self.name}: iteration {iteration}"
        if not self.max_iter:
            return text
        left = record.get("eta_seconds")  # Detectron2's own estimate
        if not isinstance(left, (int, float)):
            left = elapsed / iteration * max(self.max_iter - iteration, 0)
        text += f"/{self.max_iter}, about {_duration(left)} left"
        if self.trainings_after:
            member = elapsed + left  # what one training takes here
            rounds = math.ceil(self.trainings_after / self.jobs)  # the rest start as running ones end
            text += f" (the ladder: about {_duration(left + rounds * member)})"
        return text

    def update(self, metrics_path: str, now: float) -> Optional[str]:
        """:meth:`line` when ``interval_s`` passed since the last one (or the
        start) and the member advanced, read from its ``metrics_path``; else None."""
        if now - (self.last_line or self.started) < self.interval_s:
            return None
        record = last_metrics(metrics_path)
        if record is None or record["iteration"] == self.shown:
            return None
        self.shown, self.last_line = record["iteration"], now
        return self.line(record, now - self.started)


def _schedule_iterations(schedule: Sequence[str]) -> Optional[int]:
    """``SOLVER.MAX_ITER`` of the schedule's overrides, if it sets it."""
    values = dict(zip(schedule[::2], schedule[1::2]))
    return int(values["SOLVER.MAX_ITER"]) if "SOLVER.MAX_ITER" in values else None


def _command(member: Member, output_dir: str, schedule: List[str], datasets: Sequence[str],
             single_thread: bool) -> List[str]:
    """``tools/train_net.py``'s program training and evaluating ``member``
    (resuming if interrupted); ``single_thread``: without DataLoader worker
    processes, which would each take a core of their own."""
    workers = ["DATALOADER.NUM_WORKERS", "0"] if single_thread else []
    return [sys.executable, "-m", "sact_det.engine.train_net", "--config-file", get_config_file(member.config),
            "--resume", *member.opts, *schedule, "SEED", str(member.seed), "DATASETS.TEST", str(tuple(datasets)),
            *workers, "OUTPUT_DIR", output_dir]


def _environment(single_thread: bool) -> Optional[Dict[str, str]]:
    """The training process's environment: this one's, on one thread when
    ``single_thread``. PyTorch (OpenMP), MKL and OpenCV read these variables
    when they start, and nothing in train_net sets a thread count itself."""
    if not single_thread:
        return None
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENCV_FOR_THREADS_NUM="1")


def _attempt(member: Member, work: Callable[[], None]) -> None:
    """Runs ``work`` for ``member`` and marks it done, or failed with the error."""
    try:
        work()
        member.status, member.error = "done", ""
    except Exception as e:  # noqa: BLE001 - one failed member must not stop the ladder
        member.status, member.error = "failed", str(e)


def _failure_reason(log: str) -> str:
    """The line of a training log that says why it stopped (or its last line)."""
    with open(log) as f:
        tail = [line.strip() for line in f.readlines()[-40:] if line.strip()]
    return next((line for line in reversed(tail) if "diverged" in line or "Error" in line), tail[-1] if tail else "")


@dataclass
class _Training:
    """A member's training process, while it runs."""

    index: int
    member: Member
    directory: str
    process: subprocess.Popen
    progress: Progress

    def collect(self, status: int, datasets: Sequence[str], task: Task) -> None:
        """The member's results once its process ended with ``status``, or its failure."""
        def results():
            log = os.path.join(self.directory, "train.log")
            if status != 0:
                raise RuntimeError(f"training exited with status {status}: {_failure_reason(log)} (log: {log})")
            self.member.results = _final_results(self.directory, datasets, task)
        _attempt(self.member, results)


def _start(index: int, total: int, member: Member, output_dir: str, schedule: List[str], datasets: Sequence[str],
           jobs: int, trainings_after: int, interval_s: float) -> _Training:
    """Starts ``member``'s training in ``output_dir/<member>`` (its log: ``train.log``)."""
    directory = os.path.join(output_dir, member.name)
    log = os.path.join(directory, "train.log")
    os.makedirs(directory, exist_ok=True)
    logger.info(f"[{index}/{total}] {member.name}: training (log: {log})")
    single_thread = jobs > 1  # side by side, each on one core; alone, on all of them
    with open(log, "a") as f:  # the process writes through its own copy of the descriptor
        process = subprocess.Popen(_command(member, directory, schedule, datasets, single_thread), stdout=f,
                                   stderr=subprocess.STDOUT, env=_environment(single_thread))
    progress = Progress(index, total, member.name, _schedule_iterations(schedule), trainings_after, jobs, interval_s)
    return _Training(index, member, directory, process, progress)


def _train_members(queue: List[Tuple[int, Member]], total: int, output_dir: str, schedule: List[str],
                   datasets: Sequence[str], task: Task, jobs: int, finished: Callable[[int, Member, float], None],
                   interval_s: float, poll_s: float) -> None:
    """Trains the members of ``queue`` ((index, member), in order), ``jobs``
    processes at a time, logging each one's :class:`Progress`; calls
    ``finished(index, member, seconds)`` in this process after each, done or
    failed. Ctrl-C (or an error here) kills every training still running."""
    queue, running = list(queue), []
    try:
        while queue or running:
            while queue and len(running) < jobs:
                index, member = queue.pop(0)
                try:
                    running.append(_start(index, total, member, output_dir, schedule, datasets, jobs, len(queue),
                                          interval_s))
                except Exception as e:  # noqa: BLE001 - it did not start (e.g. no room for its log): the rest go on
                    member.status, member.error = "failed", str(e)
                    finished(index, member, 0.0)
            if running:
                try:  # until the oldest training ends, or poll_s
                    running[0].process.wait(timeout=poll_s)
                except subprocess.TimeoutExpired:
                    pass
            now = time.monotonic()
            for training in list(running):
                status = training.process.poll()
                if status is None:
                    training.progress.trainings_after = len(queue)
                    line = training.progress.update(os.path.join(training.directory, "metrics.json"), now)
                    if line:
                        logger.info(line)
                    continue
                running.remove(training)
                training.collect(status, datasets, task)
                finished(training.index, training.member, now - training.progress.started)
    except BaseException:
        for training in running:
            training.process.kill()
        for training in running:
            training.process.wait()
        raise


def _evaluate_offset(member: Member, weights: str, datasets: Sequence[str]) -> None:
    """One point of the test-time offset curve: evaluation of a trained model."""
    from detectron2.data import build_detection_test_loader
    from detectron2.evaluation import COCOEvaluator, DatasetEvaluators
    from detectron2.modeling import build_model

    from sact_det.apps.budget import evaluate_offset
    from sact_det.config.defaults import fall_back_to_cpu, get_sact_cfg
    from sact_det.data.mapper import ReportingDatasetMapper
    from sact_det.engine.checkpoint import SACTCheckpointer
    from sact_det.evaluation.evaluator import SACTEvaluator
    from sact_det.utils.env import has_compiled_ops

    cfg = get_sact_cfg(get_config_file(member.config), [*member.opts, "MODEL.WEIGHTS", weights])
    fall_back_to_cpu(cfg)
    model = build_model(cfg).eval()
    SACTCheckpointer(model).load(weights)
    for dataset in datasets:
        loader = build_detection_test_loader(cfg, dataset, mapper=ReportingDatasetMapper(cfg, False))

        def evaluators(dataset=dataset):
            return DatasetEvaluators([COCOEvaluator(dataset, output_dir=None, use_fast_impl=has_compiled_ops()),
                                      SACTEvaluator(dataset, distributed=False)])

        point = evaluate_offset(model, loader, evaluators, member.offset)
        member.results.update({f"{dataset}/AP": point.ap, f"{dataset}/FLOPs_pct": point.flops_pct})



def run_ladder(output_dir: str, members: List[Member], schedule: List[str], datasets: Optional[Sequence[str]] = None,
               offsets: Sequence[float] = (), offset_of: Optional[str] = None, task: Task = DETECTION, jobs: int = 1,
               interval_s: float = 60.0, poll_s: float = 5.0) -> List[Member]:
    """Trains and evaluates every member not already done (resuming after a
    kill), ``jobs`` at a time, then the offset curve of member ``offset_of``
    (a detector); after each, rewrites the state and the report
    (:func:`write_report`). Logs each member's start and, every ``interval_s``
    while it trains, its progress (:class:`Progress`). Returns all members."""
    datasets = list(datasets or task.datasets)
    os.makedirs(output_dir, exist_ok=True)
    state_path = os.path.join(output_dir, STATE_FILE)
    recorded, previous = _load_state(state_path)
    if previous and _recorded_task(recorded) != task.name:
        raise InputValueError(f"{state_path} is the state of a {_recorded_task(recorded)} ladder, not of a "
                              f"{task.name} one: choose another output directory")
    settings = {"task": task.name, "schedule": list(schedule), "datasets": datasets, "offsets": list(offsets)}
    trained = {m.name: m for m in members}
    curve = offset_members(trained[offset_of], offsets) if offsets and offset_of in trained else []
    everything = members + curve
    for member in everything:  # finished members of an earlier run are kept
        done = previous.get(member.name)
        if done and done["status"] == "done":
            member.status, member.results = "done", done["results"]
    pending = [m for m in everything if m.status != "done"]
    total = len(everything)
    logger.info(f"tradeoff: {len(pending)} of {total} members to run ({total - len(pending)} done earlier); "
                f"each member trains in its own process, {jobs} at a time, "
                f"its log in {os.path.join(output_dir, '<member>', 'train.log')}")

    def finished(index: int, member: Member, seconds: float) -> None:
        if member.status == "done":
            logger.info(f"[{index}/{total}] {member.name}: done in {_duration(seconds)}")
        else:
            logger.error(f"[{index}/{total}] {member.name} failed: {member.error}")
        _save_state(state_path, everything, settings)
        write_report(output_dir, everything, task, datasets)

    trainings = [(i, m) for i, m in enumerate(everything, start=1) if m.status != "done" and m.offset is None]
    _train_members(trainings, total, output_dir, schedule, datasets, task, jobs, finished, interval_s, poll_s)
    for index, member in enumerate(everything, start=1):
        if member.status == "done" or member.offset is None:
            continue
        logger.info(f"[{index}/{total}] {member.name}: evaluating")
        start, source = time.monotonic(), trained[offset_of]

        def evaluate(member=member, source=source):
            if source.status != "done":
                raise RuntimeError(f"{offset_of} did not train")
            _evaluate_offset(member, os.path.join(output_dir, source.name, "model_final.pth"), datasets)
        _attempt(member, evaluate)
        finished(index, member, time.monotonic() - start)
    _save_state(state_path, everything, settings)
    write_report(output_dir, everything, task, datasets)
    return everything


def summarize(members: List[Member], dataset: str, task: Task = DETECTION) -> List[dict]:
    """Rows per (family, label): mean and std over seeds of FLOPs % and of the
    task's score (:attr:`Task.score`), from the members done."""
    groups: Dict[tuple, List[Member]] = {}
    for m in members:
        if m.status == "done" and f"{dataset}/{task.score}" in m.results:
            groups.setdefault((m.family, m.label), []).append(m)
    rows = []
    for (family, label), group in groups.items():
        flops = np.array([m.results[f"{dataset}/FLOPs_pct"] for m in group])
        score = np.array([m.results[f"{dataset}/{task.score}"] for m in group])
        rows.append({"family": family, "label": label, "seeds": len(group), "flops_pct": float(flops.mean()),
                     "flops_pct_std": float(flops.std()), "score": float(score.mean()),
                     "score_std": float(score.std()), "score_per_seed": [float(s) for s in score]})
    return sorted(rows, key=lambda r: (FAMILIES.index(r["family"]), r["flops_pct"]))


def markdown_table(rows: List[dict], dataset: str, task: Task = DETECTION) -> str:
    lines = [f"| family | member | seeds | FLOPs % ({dataset}) | {task.score_label} ({dataset}) "
             f"| {task.score_short} per seed |", "|---|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['label']} | {r['seeds']} | {r['flops_pct']:.1f} ± {r['flops_pct_std']:.1f} "
                     f"| {r['score']:.1f} ± {r['score_std']:.1f} "
                     f"| {', '.join(f'{s:.1f}' for s in r['score_per_seed'])} |")
    return "\n".join(lines)


def informativeness(rows: List[dict], task: Task = CLASSIFICATION) -> str:
    """Whether the ladder tells networks apart at all, one line: the score of
    the deepest plain network (the full-depth one in the default ladder) minus
    the shallowest's, means over seeds, against twice the spread between seeds.
    The spread is the largest std over seeds (the table's ±, numpy's std:
    divided by the number of seeds) among the plain networks; only plain
    networks with two seeds or more count. Informative when the difference is
    larger than twice the spread."""
    plain = [r for r in rows if r["family"] == FAMILIES[2] and r["seeds"] > 1]  # rows come by FLOPs
    if len(plain) < 2:
        return ("Informative? Cannot tell yet: that needs two plain networks (ResNet, fewer units) "
                "with two seeds or more each.")
    shallow, deep = plain[0], plain[-1]
    difference, spread = deep["score"] - shallow["score"], max(r["score_std"] for r in plain)
    verdict = "informative" if difference > 2 * spread else "NOT informative"
    return (f"Informative? Plain {deep['label']} minus plain {shallow['label']}: {difference:+.1f} "
            f"{task.score_short} (means over seeds), against twice the spread between seeds, "
            f"2 x {spread:.1f} = {2 * spread:.1f} (spread: the largest std over seeds among the plain networks, "
            f"the table's ±): **{verdict}**.")


def write_report(output_dir: str, members: List[Member], task: Task, datasets: Sequence[str]) -> str:
    """Writes ``tradeoff.md`` from the members done so far (how many of how
    many, which failed; a table per dataset, with :func:`informativeness` when
    the task checks it) and, once one is done, ``tradeoff.png`` (the first
    dataset). Returns the markdown."""
    done = sum(m.status == "done" for m in members)
    failed = [m for m in members if m.status == "failed"]
    parts = [f"{done} of {len(members)} members done" + (f"; failed: {', '.join(m.name for m in failed)}"
                                                         if failed else "") + "."]
    for dataset in datasets:
        rows = summarize(members, dataset, task)
        parts.append(markdown_table(rows, dataset, task))
        if task.check_informative:
            parts.append(informativeness(rows, task))
    if failed:
        parts.append("Failed: " + "; ".join(f"{m.name}: {m.error}" for m in failed))
    text = "\n\n".join(parts) + "\n"
    with atomic_path(os.path.join(output_dir, "tradeoff.md")) as temporary, open(temporary, "w") as f:
        f.write(text)
    rows = summarize(members, datasets[0], task)
    if rows:
        plot(rows, os.path.join(output_dir, "tradeoff.png"), datasets[0], task)
    return text


def table_only(output_dir: str, task_name: Optional[str] = None) -> str:
    """:func:`write_report` of the ladder in ``output_dir``, from its
    ``tradeoff.json`` alone (nothing trains); ``task_name``, when given, must
    be the ladder's. Returns the markdown."""
    path = os.path.join(output_dir, STATE_FILE)
    if not os.path.isfile(path):
        raise InputFileNotFoundError(f"{path} does not exist: no ladder has run in {output_dir} "
                                     "(run tools/tradeoff.py without --table-only first)")
    settings, previous = _load_state(path)
    recorded = _recorded_task(settings)
    if task_name not in (None, recorded):
        raise InputValueError(f"{path} is the state of a {recorded} ladder, not of a {task_name} one")
    task = TASKS[recorded]
    members = [Member(**{k: v for k, v in m.items() if k != "name"}) for m in previous.values()]
    return write_report(output_dir, members, task, settings["datasets"])


def plot(rows: List[dict], path: str, dataset: str, task: Task = DETECTION) -> None:
    """The score against FLOPs %, one line per family, error bars: std over seeds (Fig. 7)."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

    fig = Figure(figsize=(6.4, 4.4), dpi=120)
    ax = fig.subplots()
    for family, marker in zip(FAMILIES, "osD^"):
        group = [r for r in rows if r["family"] == family]
        if group:
            ax.errorbar([r["flops_pct"] for r in group], [r["score"] for r in group],
                        xerr=[r["flops_pct_std"] for r in group], yerr=[r["score_std"] for r in group],
                        marker=marker, capsize=3, label=family, linestyle="--" if "offset" in family else "-")
    ax.set_xlabel(task.flops_label)
    ax.set_ylabel(f"{task.score_label} ({dataset})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as temporary:
        fig.savefig(temporary)


def schedule_for(max_iter: int, task: Task = DETECTION) -> List[str]:
    """The task's schedule (decays at :attr:`Task.decays` of the training,
    warm-up :attr:`Task.warmup`) scaled to ``max_iter``."""
    steps = sorted({s for s in (int(max_iter * d) for d in task.decays) if 0 < s < max_iter})
    return ["SOLVER.MAX_ITER", str(max_iter), "SOLVER.STEPS", str(tuple(steps)),
            "SOLVER.WARMUP_ITERS", str(min(task.warmup, max_iter // 9)),
            "SOLVER.CHECKPOINT_PERIOD", str(max(1, max_iter // 4))]


def run_tradeoff(output_dir: str, seeds: int = 2, quick: bool = False, max_iter: Optional[int] = None,
                 offsets: Optional[Sequence[float]] = None, opts: Sequence[str] = (),
                 datasets: Optional[Sequence[str]] = None, task: Task = DETECTION,
                 taus: Optional[Sequence[float]] = None, act_taus: Optional[Sequence[float]] = None,
                 jobs: int = 1) -> List[dict]:
    """The whole ladder of ``task`` (defaults: the task's): trains what is not
    done, ``jobs`` members at a time, and writes ``tradeoff.json``,
    ``tradeoff.md`` and ``tradeoff.png`` under ``output_dir``; returns the rows
    of the table (on the first dataset)."""
    offsets = task.offsets if offsets is None else tuple(offsets)
    if offsets and not task.offsets:
        raise InputValueError(f"test-time halting offsets are evaluated on detectors only, not in the {task.name} "
                              "ladder")
    datasets = tuple(datasets or task.datasets)
    max_iter = max_iter or (task.max_iter // 4 if quick else task.max_iter)
    members = default_ladder(range(1 if quick else seeds), quick, task, taus, act_taus)
    for member in members:
        member.opts += list(opts)
    sact = [m for m in members if m.family == "SACT" and m.seed == 0]
    offset_of = sact[len(sact) // 2].name if sact else None  # the middle tau
    members = run_ladder(output_dir, members, schedule_for(max_iter, task), datasets, offsets, offset_of, task, jobs)
    return summarize(members, datasets[0], task)
