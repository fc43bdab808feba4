"""Short runs are quiet: no PyTorch or Detectron2 notices from a plain script's
SACTPredictor or from the benchmark's profiler, silenced by message only
(issue 24, item 6), and no TensorFlow start-up lines from a training's
TensorBoard writer where TensorFlow is installed."""
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO

from sact_det.utils.noise import KINETO_QUIET_LEVEL, quiet_profiler_logs, quiet_tensorflow_logs


def run_script(code: str, **env) -> subprocess.CompletedProcess:
    """``code`` as a plain script (Python's default warning filters, no pytest)."""
    environment = dict(os.environ, PYTHONPATH=REPO, **env)
    for variable in ("KINETO_LOG_LEVEL", "TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS"):
        environment.pop(variable, None)
    environment.pop("PYTHONWARNINGS", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=environment, cwd=REPO, timeout=300)


def test_a_plain_script_with_sact_predictor_prints_nothing_but_its_own():
    result = run_script("""
        import logging, warnings
        import numpy as np
        from sact_det import SACTPredictor, get_sact_cfg
        from sact_det.config import get_config_file
        cfg = get_sact_cfg(get_config_file("synthetic/sact_tiny.yaml"),
                           ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96"])
        predictor = SACTPredictor(cfg)
        outputs = predictor(np.zeros((70, 90, 3), np.uint8))
        predictor(np.zeros((70, 90, 3), np.uint8))
        print("flops", outputs["sact"]["flops"])
        # Scoped to the predictor: the same kinds of messages from elsewhere still show.
        warnings.warn("a warning of the script's own", UserWarning)
        logging.getLogger("torch.fx._symbolic_trace").warning("another torch.fx notice")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("flops ")
    lines = result.stderr.strip().splitlines()
    assert not any("meshgrid" in line or "is_fx_tracing" in line for line in lines), result.stderr
    ours = ("a warning of the script's own", "another torch.fx notice")
    assert [any(text in line for line in lines) for text in ours] == [True, True], result.stderr
    assert all(any(text in line for text in ours) for line in lines), result.stderr  # and nothing else


def test_the_profiler_of_the_benchmark_prints_no_kineto_lines():
    result = run_script("""
        import torch
        from sact_det.apps.benchmark.timing import peak_memory_mb
        print(peak_memory_mb(lambda x: (x * 2).sum(), torch.ones(1000)) >= 0)
    """)
    assert result.returncode == 0 and result.stdout.strip() == "True", result.stderr
    assert "USDT" not in result.stderr and "gpuGetDeviceCount" not in result.stderr, result.stderr


def test_a_kineto_level_set_by_the_user_is_kept(monkeypatch):
    monkeypatch.setenv("KINETO_LOG_LEVEL", "2")
    quiet_profiler_logs()
    assert os.environ["KINETO_LOG_LEVEL"] == "2"
    monkeypatch.delenv("KINETO_LOG_LEVEL")
    quiet_profiler_logs()
    assert os.environ["KINETO_LOG_LEVEL"] == KINETO_QUIET_LEVEL


def test_the_trainers_tensorboard_writer_prints_no_tensorflow_lines(tmp_path):
    pytest.importorskip("tensorflow", reason="the tf extra is not installed (make installs it)")
    result = run_script(f"""
        from detectron2.utils.events import EventStorage
        from sact_det.engine.trainer import SACTTrainer

        class Writers(SACTTrainer):  # only what build_writers reads
            def __init__(self):
                self.cfg, self.max_iter = type("cfg", (), {{"OUTPUT_DIR": {str(tmp_path)!r}}})(), 1
        writers = Writers().build_writers()
        with EventStorage(0) as storage:
            storage.put_scalar("loss", 1.0)
            for writer in writers[1:3]:  # the JSON and TensorBoard writers
                writer.write()
        print("written")
    """)
    assert result.returncode == 0 and result.stdout.strip() == "written", result.stderr
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path))
    for line in ("absl::InitializeLog", "oneDNN custom operations", "cpu_feature_guard"):
        assert line not in result.stderr, result.stderr


def test_tensorflow_levels_set_by_the_user_are_kept(monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    quiet_tensorflow_logs()
    assert (os.environ["TF_CPP_MIN_LOG_LEVEL"], os.environ["TF_ENABLE_ONEDNN_OPTS"]) == ("0", "0")
