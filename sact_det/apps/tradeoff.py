"""The paper's trade-off curve in miniature (Table 1, Fig. 7): AP against
feature-extractor FLOPs for SACT at several tau, ACT, non-adaptive ResNets with
fewer units per block, and one SACT model's test-time halting offsets.

Each member of the ladder is trained and evaluated by ``tools/train_net.py`` in
its own process and output directory, so a member that diverges is marked
failed and the rest go on, and a killed ladder resumes: finished members are
skipped, an interrupted one continues from its last checkpoint. The state is
``tradeoff.json``, rewritten atomically after every member.

Progress: a line when each member starts (member i of n, where its log is)
and, while one trains, a line every minute with its iteration and the time
left (read from the ``metrics.json`` it writes), for it and for the ladder.
"""
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from sact_det.config import get_config_file
from sact_det.utils.files import atomic_path

__all__ = ["Member", "default_ladder", "Progress", "last_metrics", "run_ladder", "summarize", "markdown_table",
           "plot"]

logger = logging.getLogger("sact_det")
STATE_FILE = "tradeoff.json"
FAMILIES = ("SACT", "ACT", "ResNet (fewer units)", "SACT + test-time offset")


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
    results: Dict[str, float] = field(default_factory=dict)  # AP, AP50, FLOPs_pct per dataset
    error: str = ""

    @property
    def name(self) -> str:
        return f"{self.family}_{self.label}_seed{self.seed}".replace(" ", "").replace("(", "").replace(")", "")


def default_ladder(seeds: Sequence[int] = (0, 1), quick: bool = False) -> List[Member]:
    """SACT at three tau, ACT at two, four non-adaptive baselines with fewer
    units per block (the paper's baseline family, sec. 4.1); ``quick``: fewer."""
    taus = (0.005, 0.02) if quick else (0.005, 0.01, 0.02)
    act_taus = (0.01,) if quick else (0.005, 0.02)
    units = ((1, 1, 2), (2, 3, 4)) if quick else ((1, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 6))
    members = []
    for seed in seeds:
        members += [Member("SACT", f"tau={tau:g}", seed, ["MODEL.SACT.TYPE", "sact", "MODEL.SACT.TAU", str(tau)])
                    for tau in taus]
        members += [Member("ACT", f"tau={tau:g}", seed, ["MODEL.SACT.TYPE", "act", "MODEL.SACT.TAU", str(tau)])
                    for tau in act_taus]
        members += [Member("ResNet (fewer units)", "units=" + "-".join(map(str, u)), seed,
                           ["MODEL.SACT.TYPE", "none", "MODEL.SACT.NUM_UNITS", str(list(u))]) for u in units]
    return members


def offset_members(trained: Member, offsets: Sequence[float]) -> List[Member]:
    """The test-time offset curve of one trained SACT member."""
    return [Member(FAMILIES[3], f"offset={o:+g}", trained.seed, list(trained.opts), trained.config, offset=o)
            for o in offsets]


def _load_state(path: str) -> Dict[str, dict]:
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return {m["name"]: m for m in json.load(f)["members"]}


def _save_state(path: str, members: List[Member], settings: dict) -> None:
    with atomic_path(path) as temporary, open(temporary, "w") as f:
        json.dump({"settings": settings, "members": [dict(asdict(m), name=m.name) for m in members]}, f, indent=1)


def _final_results(output_dir: str, datasets: Sequence[str]) -> Dict[str, float]:
    """AP, AP50 and FLOPs % per dataset from the last evaluation in metrics.json."""
    with open(os.path.join(output_dir, "metrics.json")) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    results = {}
    for dataset in datasets:
        prefix = f"{dataset}/" if len(datasets) > 1 else ""
        last = next(m for m in reversed(lines) if f"{prefix}bbox/AP" in m)
        results.update({f"{dataset}/AP": last[f"{prefix}bbox/AP"], f"{dataset}/AP50": last[f"{prefix}bbox/AP50"],
                        f"{dataset}/FLOPs_pct": last[f"{prefix}sact/FLOPs_pct"]})
        for key in ("detector_FLOPs_pct", "head_units"):  # the whole detector, an ACT box head
            if f"{prefix}sact/{key}" in last:
                results[f"{dataset}/{key}"] = last[f"{prefix}sact/{key}"]
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
    trainings still to run after it (for the ladder's time left)."""

    index: int
    total: int
    name: str
    max_iter: Optional[int] = None
    trainings_after: int = 0
    interval_s: float = 60.0  # between two progress lines
    poll_s: float = 5.0  # between two looks at metrics.json

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
            text += f" (the ladder: about {_duration(left + self.trainings_after * member)})"
        return text

    def wait(self, process: subprocess.Popen, metrics_path: str) -> int:
        """Waits for the training ``process`` to end, logging :meth:`line` every
        ``interval_s`` seconds when it advanced; returns its exit status. An
        interrupted wait (Ctrl-C) kills the process, as ``subprocess.run`` does."""
        start = last_line = time.monotonic()
        shown = None
        while True:
            try:
                return process.wait(timeout=self.poll_s)
            except subprocess.TimeoutExpired:
                pass
            except BaseException:
                process.kill()
                process.wait()
                raise
            now = time.monotonic()
            if now - last_line < self.interval_s:
                continue
            record = last_metrics(metrics_path)
            if record is not None and record["iteration"] != shown:
                logger.info(self.line(record, now - start))
                shown, last_line = record["iteration"], now


def _schedule_iterations(schedule: Sequence[str]) -> Optional[int]:
    """``SOLVER.MAX_ITER`` of the schedule's overrides, if it sets it."""
    values = dict(zip(schedule[::2], schedule[1::2]))
    return int(values["SOLVER.MAX_ITER"]) if "SOLVER.MAX_ITER" in values else None


def _train(member: Member, output_dir: str, schedule: List[str], datasets: Sequence[str],
           progress: Progress) -> None:
    """Trains and evaluates one member with ``tools/train_net.py``'s program
    (resuming if interrupted), showing its ``progress``."""
    log = os.path.join(output_dir, "train.log")
    os.makedirs(output_dir, exist_ok=True)
    cmd = [sys.executable, "-m", "sact_det.engine.train_net", "--config-file",
           get_config_file(member.config), "--resume", *member.opts, *schedule, "SEED", str(member.seed),
           "DATASETS.TEST", str(tuple(datasets)), "OUTPUT_DIR", output_dir]
    with open(log, "a") as f:
        status = progress.wait(subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT),
                               os.path.join(output_dir, "metrics.json"))
    if status != 0:
        with open(log) as f:
            tail = [line.strip() for line in f.readlines()[-40:] if line.strip()]
        reason = next((line for line in reversed(tail) if "diverged" in line or "Error" in line), tail[-1] if tail
                      else "")
        raise RuntimeError(f"training exited with status {status}: {reason} (log: {log})")
    member.results = _final_results(output_dir, datasets)


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


def run_ladder(output_dir: str, members: List[Member], schedule: List[str], datasets: Sequence[str],
               offsets: Sequence[float] = (), offset_of: str = "SACT_tau=0.01_seed0") -> List[Member]:
    """Trains and evaluates every member not already done (resuming after a
    kill), then the offset curve of member ``offset_of``; writes the state
    after each. Logs each member's start and, while it trains, its progress
    (:class:`Progress`). Returns all members."""
    os.makedirs(output_dir, exist_ok=True)
    state_path = os.path.join(output_dir, STATE_FILE)
    previous = _load_state(state_path)
    settings = {"schedule": list(schedule), "datasets": list(datasets), "offsets": list(offsets)}
    trained = {m.name: m for m in members}
    curve = offset_members(trained[offset_of], offsets) if offsets and offset_of in trained else []
    everything = members + curve
    for member in everything:  # finished members of an earlier run are kept
        done = previous.get(member.name)
        if done and done["status"] == "done":
            member.status, member.results = "done", done["results"]
    pending = [m for m in everything if m.status != "done"]
    logger.info(f"tradeoff: {len(pending)} of {len(everything)} members to run "
                f"({len(everything) - len(pending)} done earlier); each member trains in its own process, "
                f"its log in {os.path.join(output_dir, '<member>', 'train.log')}")
    for index, member in enumerate(everything, start=1):
        if member.status == "done":
            continue
        start = time.monotonic()
        try:
            if member.offset is None:
                member_dir = os.path.join(output_dir, member.name)
                logger.info(f"[{index}/{len(everything)}] {member.name}: training "
                            f"(log: {os.path.join(member_dir, 'train.log')})")
                trainings_after = sum(1 for m in everything[index:] if m.status != "done" and m.offset is None)
                progress = Progress(index, len(everything), member.name, _schedule_iterations(schedule),
                                    trainings_after)
                _train(member, member_dir, schedule, datasets, progress)
            else:
                logger.info(f"[{index}/{len(everything)}] {member.name}: evaluating")
                source = trained[offset_of]
                if source.status != "done":
                    raise RuntimeError(f"{offset_of} did not train")
                _evaluate_offset(member, os.path.join(output_dir, source.name, "model_final.pth"), datasets)
            member.status, member.error = "done", ""
            logger.info(f"[{index}/{len(everything)}] {member.name}: done in {_duration(time.monotonic() - start)}")
        except Exception as e:  # noqa: BLE001 - one failed member must not stop the ladder
            member.status, member.error = "failed", str(e)
            logger.error(f"[{index}/{len(everything)}] {member.name} failed: {e}")
        _save_state(state_path, everything, settings)
    _save_state(state_path, everything, settings)
    return everything


def summarize(members: List[Member], dataset: str) -> List[dict]:
    """Rows per (family, label): mean and std over seeds of FLOPs % and AP."""
    groups: Dict[tuple, List[Member]] = {}
    for m in members:
        if m.status == "done" and f"{dataset}/AP" in m.results:
            groups.setdefault((m.family, m.label), []).append(m)
    rows = []
    for (family, label), group in groups.items():
        flops = np.array([m.results[f"{dataset}/FLOPs_pct"] for m in group])
        ap = np.array([m.results[f"{dataset}/AP"] for m in group])
        rows.append({"family": family, "label": label, "seeds": len(group), "flops_pct": float(flops.mean()),
                     "flops_pct_std": float(flops.std()), "ap": float(ap.mean()), "ap_std": float(ap.std()),
                     "ap_per_seed": [float(a) for a in ap]})
    return sorted(rows, key=lambda r: (FAMILIES.index(r["family"]), r["flops_pct"]))


def markdown_table(rows: List[dict], dataset: str) -> str:
    lines = [f"| family | member | seeds | FLOPs % ({dataset}) | box AP ({dataset}) | AP per seed |",
             "|---|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['label']} | {r['seeds']} | {r['flops_pct']:.1f} ± {r['flops_pct_std']:.1f} "
                     f"| {r['ap']:.1f} ± {r['ap_std']:.1f} | {', '.join(f'{a:.1f}' for a in r['ap_per_seed'])} |")
    return "\n".join(lines)


def plot(rows: List[dict], path: str, dataset: str) -> None:
    """AP against FLOPs %, one line per family, error bars: std over seeds (Fig. 7)."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

    fig = Figure(figsize=(6.4, 4.4), dpi=120)
    ax = fig.subplots()
    for family, marker in zip(FAMILIES, "osD^"):
        group = [r for r in rows if r["family"] == family]
        if group:
            ax.errorbar([r["flops_pct"] for r in group], [r["ap"] for r in group],
                        xerr=[r["flops_pct_std"] for r in group], yerr=[r["ap_std"] for r in group],
                        marker=marker, capsize=3, label=family, linestyle="--" if "offset" in family else "-")
    ax.set_xlabel("feature-extractor FLOPs, % of the dense network")
    ax.set_ylabel(f"box AP ({dataset})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as temporary:
        fig.savefig(temporary)


def schedule_for(max_iter: int) -> List[str]:
    """The demo's schedule (decays at 78 % and 94 %, warm-up 100) scaled to ``max_iter``."""
    steps = sorted({s for s in (int(max_iter * 0.78), int(max_iter * 0.94)) if 0 < s < max_iter})
    return ["SOLVER.MAX_ITER", str(max_iter), "SOLVER.STEPS", str(tuple(steps)),
            "SOLVER.WARMUP_ITERS", str(min(100, max_iter // 9)),
            "SOLVER.CHECKPOINT_PERIOD", str(max(1, max_iter // 4))]


def run_tradeoff(output_dir: str, seeds: int = 2, quick: bool = False, max_iter: Optional[int] = None,
                 offsets: Sequence[float] = (-2.0, -1.0, 1.0, 2.0, 3.0), opts: Sequence[str] = (),
                 datasets: Sequence[str] = ("synthetic_val", "synthetic_val_heldout")) -> List[dict]:
    """The whole ladder: trains what is not done, writes ``tradeoff.json``,
    ``tradeoff.md`` and ``tradeoff.png`` under ``output_dir``; returns the rows
    of the table (on the first dataset)."""
    max_iter = max_iter or (150 if quick else 600)
    members = default_ladder(seeds=range(1 if quick else seeds), quick=quick)
    for member in members:
        member.opts += list(opts)
    sact = [m for m in members if m.family == "SACT" and m.seed == 0]
    offset_of = sact[len(sact) // 2].name  # the middle tau
    members = run_ladder(output_dir, members, schedule_for(max_iter), datasets, offsets, offset_of)
    rows = summarize(members, datasets[0])
    with atomic_path(os.path.join(output_dir, "tradeoff.md")) as temporary, open(temporary, "w") as f:
        f.write(markdown_table(rows, datasets[0]) + "\n")
        for dataset in datasets[1:]:
            f.write("\n" + markdown_table(summarize(members, dataset), dataset) + "\n")
        failed = [m for m in members if m.status == "failed"]
        if failed:
            f.write("\nFailed: " + "; ".join(f"{m.name}: {m.error}" for m in failed) + "\n")
    if rows:
        plot(rows, os.path.join(output_dir, "tradeoff.png"), datasets[0])
    return rows
