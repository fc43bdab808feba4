"""The trade-off ladder (sact_det.apps.tradeoff): runs end to end, skips finished members, survives failures,
trains members side by side, tables a partial run; the classification ladder."""
import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import load_tool, tiny_cfg, tiny_cls_cfg

from sact_det.apps import tradeoff
from sact_det.apps.tradeoff import (CLASSIFICATION, FAMILIES, STATE_FILE, Member, Progress, default_ladder,
                                    informativeness, last_metrics, run_ladder, run_tradeoff)

# tiny_cfg's test-size overrides, for every member's tools/train_net.py process
SMALL = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192",
         "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64",
         "MODEL.RPN.POST_NMS_TOPK_TEST", "32", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
         "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0"]


def test_ladders_cover_the_paper_families():
    ladder = default_ladder(seeds=(0, 1))
    count = {f: len({m.label for m in ladder if m.family == f}) for f in ("SACT", "ACT", "ResNet (fewer units)")}
    assert count["SACT"] >= 3 and count["ACT"] >= 2 and count["ResNet (fewer units)"] >= 3
    assert {m.seed for m in ladder} == {0, 1} and len({m.name for m in ladder}) == len(ladder)
    for quick in (False, True):  # every member's overrides are valid config, also on one thread
        for member in default_ladder(seeds=(0,), quick=quick):
            tiny_cfg(*member.opts, "DATALOADER.NUM_WORKERS", "0")
        for member in default_ladder(seeds=(0,), quick=quick, task=CLASSIFICATION):
            tiny_cls_cfg(*member.opts, "DATALOADER.NUM_WORKERS", "0", config=member.config)


def test_classification_ladder_members():
    """Fig. 7 in miniature: SACT and ACT at the given tau, plain ResNets with fewer
    units in all four blocks, down from the full-depth 3-4-6-3 (the dense reference)."""
    ladder = default_ladder(seeds=(0, 1, 2), task=CLASSIFICATION, taus=(0.005, 0.01, 0.02), act_taus=(0.005, 0.02))
    assert len(ladder) == 27 and {m.config for m in ladder} == {"synthetic/cls_sact_tiny.yaml"}
    seed0 = [m for m in ladder if m.seed == 0]
    assert [m.label for m in seed0] == ["tau=0.005", "tau=0.01", "tau=0.02", "tau=0.005", "tau=0.02", "units=1-1-1-1",
                                        "units=1-2-3-1", "units=2-3-4-2", "units=3-4-6-3"]
    assert seed0[3].opts == ["MODEL.SACT.TYPE", "act", "MODEL.SACT.TAU", "0.005"]
    assert seed0[-1].opts == ["MODEL.SACT.TYPE", "none", "MODEL.SACT.NUM_UNITS", "[3, 4, 6]",
                              "MODEL.SACT.RES5_NUM_UNITS", "3"]
    cfg = tiny_cls_cfg(*seed0[6].opts)
    assert cfg.MODEL.META_ARCHITECTURE == "SACTClassifier" and cfg.MODEL.SACT.TYPE == "none"
    assert list(cfg.MODEL.SACT.NUM_UNITS) == [1, 2, 3] and cfg.MODEL.SACT.RES5_NUM_UNITS == 1
    assert [m.label for m in default_ladder(seeds=(0,), task=CLASSIFICATION, taus=(0.1,), act_taus=())] == [
        "tau=0.1", "units=1-1-1-1", "units=1-2-3-1", "units=2-3-4-2", "units=3-4-6-3"]
    with pytest.raises(ValueError, match="detectors only"):
        run_tradeoff("unused", task=CLASSIFICATION, offsets=(1.0,))


def test_classification_results_from_metrics_json(tmp_path):
    """The last evaluation's keys, named by dataset only when there are several (Detectron2's results)."""
    records = [{"iteration": 9, "total_loss": 1.0},
               {"iteration": 9, "classification/top1": 37.5, "classification/top5": 100.0, "sact/FLOPs_pct": 61.2,
                "sact/FLOPs_pct_std": 4.0, "sact/units_res2": 2.1},
               {"iteration": 19, "classification/top1": 42.5, "classification/top5": 100.0, "sact/FLOPs_pct": 58.0,
                "sact/FLOPs_pct_std": 3.0}]
    (tmp_path / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert tradeoff._final_results(str(tmp_path), ["synthetic_cls_val"], CLASSIFICATION) == {
        "synthetic_cls_val/top1": 42.5, "synthetic_cls_val/top5": 100.0, "synthetic_cls_val/FLOPs_pct": 58.0,
        "synthetic_cls_val/FLOPs_pct_std": 3.0}
    with pytest.raises(RuntimeError, match="no evaluation on synthetic_cls_val in"):  # unprefixed keys
        tradeoff._final_results(str(tmp_path), ["synthetic_cls_val", "synthetic_cls_val_heldout"], CLASSIFICATION)


def test_quick_ladder_end_to_end_then_resumes(synthetic_root, tmp_path):
    out = str(tmp_path / "ladder")
    rows = run_tradeoff(out, quick=True, max_iter=2, offsets=(1.0,), opts=SMALL, datasets=("synthetic_val",))
    state = json.load(open(os.path.join(out, STATE_FILE)))
    assert all(m["status"] == "done" for m in state["members"]), [m["error"] for m in state["members"]]
    families = {r["family"] for r in rows}
    assert families == {"SACT", "ACT", "ResNet (fewer units)", "SACT + test-time offset"}
    assert all(0 < r["flops_pct"] < 200 and r["score"] >= 0 for r in rows)
    assert os.path.getsize(os.path.join(out, "tradeoff.png")) > 5000
    assert "| SACT | tau=" in open(os.path.join(out, "tradeoff.md")).read()
    # A second run after a kill: finished members are skipped, the unfinished one trains.
    state["members"][0]["status"] = "pending"
    json.dump(state, open(os.path.join(out, STATE_FILE), "w"))
    logs = {m["name"]: os.path.getmtime(os.path.join(out, m["name"], "train.log"))
            for m in state["members"] if m["offset"] is None}
    run_tradeoff(out, quick=True, max_iter=2, offsets=(1.0,), opts=SMALL, datasets=("synthetic_val",))
    retrained = [n for n, t in logs.items() if os.path.getmtime(os.path.join(out, n, "train.log")) != t]
    assert retrained == [state["members"][0]["name"]]


def test_a_failing_member_is_marked_and_the_rest_go_on(synthetic_root, tmp_path):
    bad = Member("SACT", "broken", 0, ["MODEL.SACT.TYPE", "bogus", *SMALL])
    good = Member("ResNet (fewer units)", "units=1-1-1", 0, ["MODEL.SACT.TYPE", "none", "MODEL.SACT.NUM_UNITS",
                                                               "[1, 1, 1]", *SMALL])
    members = run_ladder(str(tmp_path), [bad, good], ["SOLVER.MAX_ITER", "1"], ("synthetic_val",))
    assert [m.status for m in members] == ["failed", "done"]
    assert "MODEL.SACT.TYPE" in members[0].error


def test_ladder_says_which_member_and_where_its_log_is(synthetic_root, tmp_path, sact_log):
    member = Member("ResNet (fewer units)", "units=1-1-1", 0, ["MODEL.SACT.TYPE", "none", "MODEL.SACT.NUM_UNITS",
                                                                 "[1, 1, 1]", *SMALL])
    run_ladder(str(tmp_path), [member], ["SOLVER.MAX_ITER", "1"], ("synthetic_val",))
    messages = [r.getMessage() for r in sact_log.records]
    log = os.path.join(str(tmp_path), member.name, "train.log")
    assert f"[1/1] {member.name}: training (log: {log})" in messages
    assert any(m.startswith(f"[1/1] {member.name}: done in ") for m in messages)
    assert any("1 of 1 members to run" in m and "train.log" in m for m in messages)


# A stand-in for tools/train_net.py, for the ladder's process handling: its
# arguments are the seconds per logged iteration, then the command the ladder
# runs. It records what it was given, writes metrics.json as a training does
# (three iterations, then a classifier's evaluation) and fails for TAU 0.666.
FAKE_TRAINING = textwrap.dedent('''
    import json, os, sys, time
    step, argv = float(sys.argv[1]), sys.argv[2:]
    out = argv[argv.index("OUTPUT_DIR") + 1]
    datasets = eval(argv[argv.index("DATASETS.TEST") + 1])
    with open(os.path.join(out, "child.jsonl"), "a") as f:
        f.write(json.dumps({"start": time.time(), "threads": os.environ.get("OMP_NUM_THREADS"), "argv": argv}) + "\\n")
    if "0.666" in argv:
        sys.exit("ValueError: a broken member")
    with open(os.path.join(out, "metrics.json"), "a") as f:
        for it in (19, 39, 59):
            f.write(json.dumps({"iteration": it, "eta_seconds": 3.0 * (79 - it)}) + "\\n")
            f.flush()
            time.sleep(step)
        final = {"iteration": 79}
        for i, dataset in enumerate(datasets):
            prefix = dataset + "/" if len(datasets) > 1 else ""
            final.update({prefix + "classification/top1": 40.0 + i, prefix + "classification/top5": 100.0,
                          prefix + "sact/FLOPs_pct": 70.0, prefix + "sact/FLOPs_pct_std": 5.0})
        f.write(json.dumps(final) + "\\n")
    with open(os.path.join(out, "child.jsonl"), "a") as f:
        f.write(json.dumps({"end": time.time()}) + "\\n")
''')
FAST = {"interval_s": 0.1, "poll_s": 0.05}


def fake_trainings(monkeypatch, tmp_path, step: float) -> None:
    script = tmp_path / "fake_train_net.py"
    script.write_text(FAKE_TRAINING)
    command = tradeoff._command
    monkeypatch.setattr(tradeoff, "_command", lambda *args: [sys.executable, str(script), str(step), *command(*args)])


def child_records(output_dir: str, member: Member) -> list:
    with open(os.path.join(output_dir, member.name, "child.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_progress_while_a_member_trains(tmp_path, monkeypatch, sact_log):
    """Member i of n, its iteration and the time left, read from the metrics.json
    it writes as it trains (issue 24, item 6)."""
    fake_trainings(monkeypatch, tmp_path, step=0.4)
    members = default_ladder(seeds=(0,), task=CLASSIFICATION, taus=(), act_taus=(0.01,))[:2]
    run_ladder(str(tmp_path / "ladder"), members, ["SOLVER.MAX_ITER", "80"], task=CLASSIFICATION, **FAST)
    lines = [r.getMessage() for r in sact_log.records if "iteration" in r.getMessage()]
    first = [line for line in lines if line.startswith(f"[1/2] {members[0].name}: iteration ")]
    assert first and any("iteration 60/80, about 60 s left (the ladder: about" in line for line in first), lines
    assert len(lines) == len(set(lines))  # a line when it advanced, not at every look
    assert child_records(str(tmp_path / "ladder"), members[0])[0]["threads"] == os.environ.get("OMP_NUM_THREADS")
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"iteration": 59, "total_loss": 1.0}) + '\n{"iteration": 79, "total_lo')
    assert last_metrics(str(metrics))["iteration"] == 59  # a line cut short by the writer is passed over
    assert last_metrics(str(tmp_path / "absent.json")) is None


def test_jobs_train_side_by_side_on_one_thread_each_and_a_failure_stops_none(tmp_path, monkeypatch, sact_log):
    fake_trainings(monkeypatch, tmp_path, step=0.4)
    out = str(tmp_path / "ladder")
    broken = Member("SACT", "tau=0.666", 0, ["MODEL.SACT.TAU", "0.666"], CLASSIFICATION.config)
    plain = [m for m in default_ladder(seeds=(0,), task=CLASSIFICATION) if m.family == FAMILIES[2]][:3]
    reports = []
    write_report = tradeoff.write_report
    monkeypatch.setattr(tradeoff, "write_report", lambda *args: reports.append(write_report(*args)) or reports[-1])
    members = run_ladder(out, [broken, *plain], ["SOLVER.MAX_ITER", "80"], task=CLASSIFICATION, jobs=2, **FAST)
    assert [m.status for m in members] == ["failed", "done", "done", "done"]
    assert "status 1" in members[0].error and "a broken member" in members[0].error
    assert members[1].results == {"synthetic_cls_val/top1": 40.0, "synthetic_cls_val/top5": 100.0,
                                  "synthetic_cls_val/FLOPs_pct": 70.0, "synthetic_cls_val/FLOPs_pct_std": 5.0,
                                  "synthetic_cls_val_heldout/top1": 41.0, "synthetic_cls_val_heldout/top5": 100.0,
                                  "synthetic_cls_val_heldout/FLOPs_pct": 70.0,
                                  "synthetic_cls_val_heldout/FLOPs_pct_std": 5.0}
    runs = {m.name: child_records(out, m) for m in members[1:]}
    for records in runs.values():  # one thread, no DataLoader workers
        argv = records[0]["argv"]
        assert records[0]["threads"] == "1" and argv[argv.index("DATALOADER.NUM_WORKERS") + 1] == "0"
    (a_start, a_end), (b_start, b_end) = [(r[0]["start"], r[-1]["end"]) for r in list(runs.values())[:2]]
    assert a_start < b_end and b_start < a_end  # trained at the same time
    running = {line.split(":")[0] for line in (r.getMessage() for r in sact_log.records) if ": iteration " in line}
    assert len(running) >= 2  # progress lines for each member running
    state = json.load(open(os.path.join(out, STATE_FILE)))
    assert [m["status"] for m in state["members"]] == ["failed", "done", "done", "done"]
    assert state["settings"]["task"] == "classification"
    assert len(reports) == 5  # after each member, and at the end
    assert reports[0].startswith("0 of 4 members done; failed: SACT_tau=0.666_seed0.")
    assert reports[-1].startswith("3 of 4 members done; failed: SACT_tau=0.666_seed0.")
    assert "| ResNet (fewer units) | units=1-2-3-1 | 1 | 70.0 ± 0.0 | 40.0 ± 0.0 | 40.0 |" in reports[-1]
    assert "top-1 (%) (synthetic_cls_val_heldout)" in reports[-1]
    assert os.path.getsize(os.path.join(out, "tradeoff.png")) > 5000


def test_ctrl_c_kills_every_training_and_the_ladder_resumes(tmp_path, monkeypatch):
    fake_trainings(monkeypatch, tmp_path, step=20)
    out = str(tmp_path / "ladder")
    members = default_ladder(seeds=(0,), task=CLASSIFICATION, taus=(), act_taus=(0.01,))[:3]
    started, popen = [], subprocess.Popen
    monkeypatch.setattr(tradeoff.subprocess, "Popen", lambda *a, **k: started.append(popen(*a, **k)) or started[-1])

    def interrupt(self, metrics_path, now):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Progress, "update", interrupt)
        with pytest.raises(KeyboardInterrupt):
            run_ladder(out, members, ["SOLVER.MAX_ITER", "80"], task=CLASSIFICATION, jobs=2, **FAST)
    assert len(started) == 2 and all(p.returncode is not None for p in started)  # both killed, none left running
    fake_trainings(monkeypatch, tmp_path, step=0.01)
    members = run_ladder(out, default_ladder(seeds=(0,), task=CLASSIFICATION, taus=(), act_taus=(0.01,))[:3],
                         ["SOLVER.MAX_ITER", "80"], task=CLASSIFICATION, jobs=2, **FAST)
    assert [m.status for m in members] == ["done"] * 3
    assert all("--resume" in r["argv"] for m in members for r in child_records(out, m) if "argv" in r)


def test_partial_table_and_table_only(tmp_path, capsys):
    """tradeoff.md from the members done so far, also from tradeoff.json alone (--table-only)."""
    out = str(tmp_path)
    main = load_tool("tradeoff").main
    assert main(["--table-only", "--output", out]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{os.path.join(out, STATE_FILE)} does not exist" in err
    members = default_ladder(seeds=(0, 1), task=CLASSIFICATION, taus=(0.01,), act_taus=())
    for i, member in enumerate(members[:7]):
        member.status = "done"
        member.results = {"synthetic_cls_val/top1": 30.0 + i, "synthetic_cls_val/FLOPs_pct": 50.0 + i}
    members[7].status, members[7].error = "failed", "training exited with status 1"
    tradeoff._save_state(os.path.join(out, STATE_FILE), members,
                         {"task": "classification", "schedule": [], "datasets": ["synthetic_cls_val"], "offsets": []})
    assert main(["--table-only", "--output", out]) == 0
    text = capsys.readouterr().out
    assert text.startswith("7 of 10 members done; failed: ResNetfewerunits_units=1-2-3-1_seed1.")
    assert "| family | member | seeds | FLOPs % (synthetic_cls_val) | top-1 (%) (synthetic_cls_val) |" in text
    assert "| ResNet (fewer units) | units=1-1-1-1 | 2 | 53.5 ± 2.5 | 33.5 ± 2.5 | 31.0, 36.0 |" in text
    assert "Informative? Cannot tell yet" in text and "Failed: ResNetfewerunits_units=1-2-3-1_seed1: training exited" in text
    assert open(os.path.join(out, "tradeoff.md")).read() == text
    assert os.path.getsize(os.path.join(out, "tradeoff.png")) > 5000
    assert main(["--table-only", "--task", "detection", "--output", out]) == 2
    assert "is the state of a classification ladder, not of a detection one" in capsys.readouterr().err


def test_taus_without_values_train_the_plain_networks_only(tmp_path, monkeypatch):
    """`--taus --act-taus`: no SACT or ACT members (the plain networks first, to read the check), and the
    config overrides after --opts reach every member."""
    tool = load_tool("tradeoff")
    seen = {}

    def fake_run_tradeoff(output, seeds, quick, max_iter, offsets, opts, task, taus, act_taus, jobs):
        seen.update(members=default_ladder(range(seeds), quick, task, taus, act_taus), opts=opts)
        with open(f"{output}/tradeoff.md", "w") as f:
            f.write("table\n")
    monkeypatch.setattr(tool, "run_tradeoff", fake_run_tradeoff)
    monkeypatch.setitem(tool.TASKS, "classification", dataclasses.replace(CLASSIFICATION, ensure_data=lambda: None))
    out = str(tmp_path)
    assert tool.main(["--task", "classification", "--seeds", "2", "--output", out, "--taus", "--act-taus",
                      "--opts", "MODEL.SACT.UNIT_TYPE", "pre_activation"]) == 0
    assert {m.family for m in seen["members"]} == {FAMILIES[2]} and len(seen["members"]) == 8
    assert seen["opts"] == ["MODEL.SACT.UNIT_TYPE", "pre_activation"]


def plain_rows(shallow: float, deep: float, std: float, seeds: int = 3) -> list:
    return [{"family": FAMILIES[0], "label": "tau=0.01", "seeds": seeds, "flops_pct": 60.0, "score": 80.0,
             "score_std": 9.0},
            {"family": FAMILIES[2], "label": "units=1-1-1-1", "seeds": seeds, "flops_pct": 30.0, "score": shallow,
             "score_std": std},
            {"family": FAMILIES[2], "label": "units=2-3-4-2", "seeds": seeds, "flops_pct": 70.0, "score": 90.0,
             "score_std": std / 2},
            {"family": FAMILIES[2], "label": "units=3-4-6-3", "seeds": seeds, "flops_pct": 100.0, "score": deep,
             "score_std": std / 2}]


def test_informativeness_footer_both_ways():
    """Full depth minus shallowest plain network against twice the largest std over seeds among the plain ones."""
    yes = informativeness(plain_rows(shallow=30.0, deep=40.0, std=4.0))  # 10 > 2 x 4; SACT's std 9 does not count
    assert "Plain units=3-4-6-3 minus plain units=1-1-1-1: +10.0 top-1" in yes and "2 x 4.0 = 8.0" in yes
    assert yes.endswith("**informative**.")
    no = informativeness(plain_rows(shallow=30.0, deep=37.0, std=4.0))
    assert no.endswith("**NOT informative**.")
    assert informativeness(plain_rows(shallow=30.0, deep=40.0, std=0.0, seeds=1)).startswith(
        "Informative? Cannot tell yet")


def test_classification_ladder_trains_real_members_side_by_side(synthetic_cls_root, tmp_path):
    """Two tiny classifiers through tools/train_net.py, side by side: the keys read exist in its metrics.json."""
    small = ["MODEL.DEVICE", "cpu", "INPUT.CLS.TRAIN_SIZE", "48", "INPUT.CLS.TEST_RESIZE", "55",
             "INPUT.CLS.TEST_SIZE", "48", "SOLVER.IMS_PER_BATCH", "4", "TEST.IMS_PER_BATCH", "4"]
    members = default_ladder(seeds=(0,), quick=True, task=CLASSIFICATION, taus=(0.01,), act_taus=())[:2]
    for member in members:
        member.opts += small
    members = run_ladder(str(tmp_path), members, ["SOLVER.MAX_ITER", "2"], task=CLASSIFICATION, jobs=2, poll_s=0.2)
    assert [m.status for m in members] == ["done", "done"], [m.error for m in members]
    for dataset in CLASSIFICATION.datasets:
        assert 0 <= members[0].results[f"{dataset}/top1"] <= members[0].results[f"{dataset}/top5"] <= 100
        assert 0 < members[1].results[f"{dataset}/FLOPs_pct"] < 100  # units 1-1-1-1 of the dense 3-4-6-3
