"""The trade-off ladder (sact_det.apps.tradeoff): runs end to end, skips finished members, survives failures."""
import json
import os

from conftest import tiny_cfg

from sact_det.apps.tradeoff import STATE_FILE, Member, default_ladder, run_ladder, run_tradeoff

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
