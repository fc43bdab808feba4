"""The trade-off ladder (sact_det.apps.tradeoff): runs end to end, skips finished members, survives failures."""
import json
import os
import subprocess
import sys
import textwrap

from conftest import tiny_cfg

from sact_det.apps.tradeoff import STATE_FILE, Member, Progress, default_ladder, last_metrics, run_ladder, run_tradeoff

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
    tiny_cfg(*default_ladder()[-1].opts)  # the overrides are valid config


def test_quick_ladder_end_to_end_then_resumes(synthetic_root, tmp_path):
    out = str(tmp_path / "ladder")
    rows = run_tradeoff(out, quick=True, max_iter=2, offsets=(1.0,), opts=SMALL, datasets=("synthetic_val",))
    state = json.load(open(os.path.join(out, STATE_FILE)))
    assert all(m["status"] == "done" for m in state["members"]), [m["error"] for m in state["members"]]
    families = {r["family"] for r in rows}
    assert families == {"SACT", "ACT", "ResNet (fewer units)", "SACT + test-time offset"}
    assert all(0 < r["flops_pct"] < 200 and r["ap"] >= 0 for r in rows)
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


def test_progress_while_a_member_trains(tmp_path, sact_log):
    """Member i of n, its iteration and the time left, read from the metrics.json
    it writes as it trains (issue 24, item 6)."""
    metrics = tmp_path / "metrics.json"
    writer = textwrap.dedent(f"""
        import json, time
        with open({str(metrics)!r}, "a") as f:
            for it in (19, 39, 59):
                f.write(json.dumps({{"iteration": it, "total_loss": 1.0, "eta_seconds": 3.0 * (79 - it)}}) + "\\n")
                f.flush()
                time.sleep(0.4)
            f.write('{{"iteration": 79, "total_lo')  # a line cut short by the writer
            f.flush()
            time.sleep(0.4)
    """)
    progress = Progress(3, 7, "SACT_tau=0.01_seed0", max_iter=80, trainings_after=2, interval_s=0.1, poll_s=0.05)
    assert progress.wait(subprocess.Popen([sys.executable, "-c", writer]), str(metrics)) == 0
    lines = [r.getMessage() for r in sact_log.records if "iteration" in r.getMessage()]
    assert lines and lines[0].startswith("[3/7] SACT_tau=0.01_seed0: iteration ")
    assert "[3/7] SACT_tau=0.01_seed0: iteration 60/80, about 60 s left (the ladder: about" in lines[-1]
    assert len(lines) == len(set(lines)) <= 3  # a line when it advanced, not at every look
    assert last_metrics(str(metrics))["iteration"] == 59  # the cut line is passed over
    assert last_metrics(str(tmp_path / "absent.json")) is None


def test_ladder_says_which_member_and_where_its_log_is(synthetic_root, tmp_path, sact_log):
    member = Member("ResNet (fewer units)", "units=1-1-1", 0, ["MODEL.SACT.TYPE", "none", "MODEL.SACT.NUM_UNITS",
                                                                 "[1, 1, 1]", *SMALL])
    run_ladder(str(tmp_path), [member], ["SOLVER.MAX_ITER", "1"], ("synthetic_val",))
    messages = [r.getMessage() for r in sact_log.records]
    log = os.path.join(str(tmp_path), member.name, "train.log")
    assert f"[1/1] {member.name}: training (log: {log})" in messages
    assert any(m.startswith(f"[1/1] {member.name}: done in ") for m in messages)
    assert any("1 of 1 members to run" in m and "train.log" in m for m in messages)
