"""Training runs that lose nothing: exact resume, divergence handling, one run per
OUTPUT_DIR, and workers that end with their launcher (issue 10, items 1, 2, 5)."""
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, StopAfter, config_path, tiny_cfg

from detectron2.engine import HookBase
from detectron2.utils.env import seed_all_rng

from sact_det.engine.train_net import argument_parser, command_line, main
from sact_det.engine.trainer import SACTTrainer, TrainingDivergedError

TINY = config_path("synthetic/sact_tiny.yaml")
# tiny_cfg's test sizes as command-line overrides, no evaluation at the end.
TINY_OPTS = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192",
             "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
             "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "SOLVER.WARMUP_ITERS", "2",
             "DATASETS.TEST", "()"]


def run_cfg(output_dir, *opts):
    seed_all_rng(0)  # as default_setup does for SEED 0: the same initial weights in every run
    return tiny_cfg("OUTPUT_DIR", str(output_dir), "SOLVER.WARMUP_ITERS", "2", "DATASETS.TEST", "()", *opts)


class ScaleWeights(HookBase):
    """After ``iteration``, multiplies the class logits' weights: a damaging update
    whose weights stay finite but whose loss explodes."""

    def __init__(self, iteration, factor=1e4):
        self.iteration, self.factor = iteration, factor

    def after_step(self):
        if self.trainer.iter == self.iteration:
            with torch.no_grad():
                self.trainer.model.roi_heads.box_predictor.cls_score.weight.mul_(self.factor)


def losses(trainer):
    return {iteration: value for value, iteration in trainer.storage.history("total_loss").values()}


def test_resume_reproduces_the_uninterrupted_run(synthetic_root, tmp_path):
    """Stopped after iteration 2 and resumed from the checkpoint of iteration 1:
    the same losses and final weights as without the stop. The data-loader
    workers of the stopped and resumed runs (2) differ from the uninterrupted
    run's (0): each sample is seeded on its own."""
    opts = ("SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2")
    whole = SACTTrainer(run_cfg(tmp_path / "whole", *opts))
    whole.resume_or_load(resume=False)
    whole.train()

    opts += ("DATALOADER.NUM_WORKERS", "2")
    stopped = SACTTrainer(run_cfg(tmp_path / "resumed", *opts))
    stopped.register_hooks([StopAfter(2)])
    with pytest.raises(KeyboardInterrupt):
        stopped.train()
    # A learning rate changed in the config but not given on the command line
    # (lr_from_config) leaves the checkpoint's schedule, so the resume stays exact.
    resumed = SACTTrainer(run_cfg(tmp_path / "resumed", *opts, "SOLVER.BASE_LR", "0.5"))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2 and resumed.scheduler.base_lrs[0] == pytest.approx(0.02)
    resumed.train()

    expected, got = losses(whole), losses(resumed)
    assert sorted(got) == [2, 3]
    for iteration in got:
        assert got[iteration] == pytest.approx(expected[iteration], rel=1e-5, abs=1e-6), iteration
    final_whole = torch.load(tmp_path / "whole" / "model_final.pth", weights_only=False)["model"]
    final_resumed = torch.load(tmp_path / "resumed" / "model_final.pth", weights_only=False)["model"]
    for key, value in final_whole.items():
        assert torch.allclose(final_resumed[key].float(), value.float(), rtol=1e-4, atol=1e-6), key


def test_checkpoint_after_a_loss_spike_is_not_good(synthetic_root, tmp_path, sact_log):
    """A spike of one iteration: the checkpoint after it is skipped with a
    warning, and training goes on; the next one, in bounds again, is written."""
    trainer = SACTTrainer(run_cfg(tmp_path, "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2"))
    trainer.register_hooks([ScaleWeights(1), ScaleWeights(2, 1e-4)])  # after the checkpoint of iteration 1, undone
    trainer.train()
    spike = losses(trainer)
    assert spike[2] > 10 * spike[1]  # the damage shows in the loss, the weights stay finite
    assert spike[3] < 10 * spike[1]
    assert not os.path.exists(tmp_path / "model_0000003.pth")
    assert "no checkpoint at iteration 3: total_loss reached" in sact_log.text
    assert open(tmp_path / "last_checkpoint").read().strip() == "model_final.pth"


def test_a_run_whose_loss_stays_out_of_bounds_stops(synthetic_root, tmp_path):
    """Out of bounds for a whole checkpoint period: diverged, with the last good checkpoint."""
    trainer = SACTTrainer(run_cfg(tmp_path, "SOLVER.MAX_ITER", "8", "SOLVER.CHECKPOINT_PERIOD", "2"))
    trainer.register_hooks([ScaleWeights(1)])  # after the checkpoint of iteration 1
    with pytest.raises(TrainingDivergedError) as error:
        trainer.train()
    spike = losses(trainer)
    assert spike[2] > 10 * spike[1] and spike[3] > 10 * spike[1]
    message = str(error.value)
    assert message.startswith("training diverged at iteration 3: total_loss stayed above ")
    assert f"from iteration 2 on; the last good checkpoint is {tmp_path / 'model_0000001.pth'}" in message.replace(
        f" ({spike[3]:.4g} at iteration 3)", "")
    assert "\n" not in message
    assert not os.path.exists(tmp_path / "model_0000003.pth")
    assert not os.path.exists(tmp_path / "model_final.pth")
    assert open(tmp_path / "last_checkpoint").read().strip() == "model_0000001.pth"


def test_a_spike_before_the_final_checkpoint_is_not_evaluated(synthetic_root, tmp_path):
    """Training that cannot write its final checkpoint has diverged: it is not
    evaluated (Detectron2 evaluates in after_train even after an exception at the
    last iteration) and ends with an error, not with no model and status 0."""
    cfg = run_cfg(tmp_path, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2",
                  "DATASETS.TEST", '("synthetic_val",)')
    trainer = SACTTrainer(cfg)
    trainer.register_hooks([ScaleWeights(1), ScaleWeights(2, 1e-4)])
    with pytest.raises(TrainingDivergedError, match="diverged at iteration 3: total_loss reached .* at iteration 2, "
                                                    ".*so the final weights are not good; the last good checkpoint "
                                                    "is .*model_0000001.pth"):
        trainer.train()
    assert not os.path.exists(tmp_path / "model_final.pth")
    assert not os.path.exists(tmp_path / "inference")  # no evaluation
    assert getattr(trainer, "_last_eval_results", None) is None


def error_of(argv, capsys):
    """(exit status, last stderr line) of tools/train_net.py's whole program."""
    with pytest.raises(SystemExit) as exit_:
        command_line(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return exit_.value.code, err.strip().splitlines()[-1]


def test_a_diverged_run_ends_non_zero_and_its_advice_works_as_printed(synthetic_root, tmp_path, capsys):
    """The issue's reproduction at test sizes (SOLVER.BASE_LR 1000.0, with the
    config's test sets): an error line, no evaluation; the printed command runs
    as printed (yacs takes the halved rate for a float) and advises halving again."""
    argv = ["--config-file", TINY, *TINY_OPTS[:-2], "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192",
            "OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", "8", "SOLVER.CHECKPOINT_PERIOD", "4",
            "SOLVER.BASE_LR", "1000.0"]
    status, line = error_of(argv, capsys)
    assert status == 2
    assert "error: training diverged at iteration " in line and ": total_loss " in line
    assert "no good checkpoint was written; start again with half the learning rate" in line
    assert not os.path.exists(tmp_path / "inference") and not os.path.exists(tmp_path / "model_final.pth")
    command = shlex.split(line[line.index("python tools/train_net.py"):])
    assert command[-2:] == ["SOLVER.BASE_LR", "500.0"] and "--resume" not in command

    status, line = error_of(command[2:], capsys)  # runs: diverges again at half the rate
    assert status == 2 and "error: training diverged at iteration " in line
    assert shlex.split(line[line.index("python tools/train_net.py"):])[-2:] == ["SOLVER.BASE_LR", "250.0"]


def test_broken_weights_are_not_a_learning_rate_problem(synthetic_root, tmp_path):
    """Weights that hold NaN before training: said so, no advice to lower the learning rate."""
    model = SACTTrainer.build_model(run_cfg(tmp_path))
    state = model.state_dict()
    state["backbone.res3.0.conv2.weight"].view(-1)[0] = float("nan")
    weights = tmp_path / "nan.pth"
    torch.save({"model": state}, weights)
    args = argument_parser().parse_args(["--config-file", TINY, *TINY_OPTS, "OUTPUT_DIR", str(tmp_path / "run"),
                                         "SOLVER.MAX_ITER", "2", "MODEL.WEIGHTS", str(weights)])
    with pytest.raises(ValueError) as error:
        main(args)
    message = str(error.value)
    assert message.startswith(f"the weights are broken: 1 tensor(s) of {weights} hold NaN or infinity before "
                              "training starts (e.g. backbone.res3.0.conv2.weight)")
    assert "learning rate cannot help" in message and "SOLVER.BASE_LR" not in message
    assert not isinstance(error.value, TrainingDivergedError)


def test_divergence_advice_works_as_printed(synthetic_root, tmp_path, monkeypatch, sact_log):
    """The printed command resumes from the last good checkpoint with the lowered
    learning rate, which takes effect although --resume restores the schedule."""
    poisoned = []

    class PoisonAfter(HookBase):  # NaN weights after iteration 2, once
        def after_step(self):
            if self.trainer.iter == 2 and not poisoned:
                poisoned.append(True)
                with torch.no_grad():
                    self.trainer.model.backbone.res3.units[0].conv2.weight.fill_(float("nan"))

    build_hooks = SACTTrainer.build_hooks
    monkeypatch.setattr(SACTTrainer, "build_hooks", lambda self: build_hooks(self) + [PoisonAfter()])
    args = argument_parser().parse_args(["--config-file", TINY, *TINY_OPTS, "OUTPUT_DIR", str(tmp_path),
                                         "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2"])
    with pytest.raises(TrainingDivergedError) as error:
        main(args)
    message = str(error.value)
    assert "model_0000001.pth" in message and "\n" not in message
    command = shlex.split(message[message.index("python tools/train_net.py"):])
    assert command[:2] == ["python", "tools/train_net.py"]
    assert "--resume" in command and command[-2:] == ["SOLVER.BASE_LR", "0.01"]  # half the config's 0.02

    sact_log.clear()
    main(argument_parser().parse_args(command[2:]))
    assert "base learning rate 0.01 instead of the checkpoint's 0.02" in sact_log.text
    final = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert final["iteration"] == 3
    lr_hook = final["trainer"]["hooks"]["LRScheduler"]
    assert lr_hook["base_lrs"][0] == pytest.approx(0.01)


def _lock_holder(lock_file):
    """A process that holds an flock on ``lock_file`` (as a running training does) until killed."""
    code = ("import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, f'pid {os.getpid()} on testhost'.encode())\n"
            "print('locked', flush=True)\n"
            "time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(lock_file)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_one_training_run_per_output_dir(synthetic_root, tmp_path):
    args = argument_parser().parse_args(["--config-file", TINY, *TINY_OPTS, "OUTPUT_DIR", str(tmp_path),
                                         "SOLVER.MAX_ITER", "1"])
    holder = _lock_holder(tmp_path / "training.lock")
    try:
        with pytest.raises(RuntimeError, match=f"OUTPUT_DIR {tmp_path} is in use by another training run "
                                               f"\\(pid {holder.pid} on testhost\\)"):
            main(args)
        assert not os.path.exists(tmp_path / "config.yaml")  # refused before writing anything
        evaluation = argument_parser().parse_args(
            ["--config-file", TINY, "--eval-only", *TINY_OPTS[:2], "INPUT.MIN_SIZE_TEST", "128",
             "INPUT.MAX_SIZE_TEST", "192", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path),
             "DATASETS.TEST", '("synthetic_val",)'])  # one dataset: results not keyed by dataset
        assert "sact" in main(evaluation)  # --eval-only may read the directory meanwhile
    finally:
        holder.kill()
        holder.wait()
    main(args)  # the lock of a dead process does not block
    assert os.path.exists(tmp_path / "model_final.pth")


def _children(pid):
    """Pids of the processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid):
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_end_when_the_launcher_is_killed(synthetic_root, tmp_path):
    """Started as a background job of a script (``cmd &``), where SIGINT is ignored:
    torch's own parent-death signal for its workers (SIGINT) then does nothing."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", TINY,
           "--num-gpus", "2", *TINY_OPTS, "SOLVER.MAX_ITER", "100000", "OUTPUT_DIR", str(tmp_path)]
    background = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *cmd]
    launcher = subprocess.Popen(background, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []
    try:
        deadline = time.time() + 240
        log = tmp_path / "log.txt"
        while time.time() < deadline and not (log.exists() and "Starting training" in log.read_text()):
            assert launcher.poll() is None, "the run ended early"
            time.sleep(0.5)
        workers = [p for p in _children(launcher.pid) if "spawn_main" in open(f"/proc/{p}/cmdline").read()]
        assert len(workers) == 2
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        deadline = time.time() + 20
        while time.time() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.2)
        assert not any(_alive(p) for p in workers)
    finally:
        launcher.kill()
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
