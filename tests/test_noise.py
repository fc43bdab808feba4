"""Short runs are quiet: no PyTorch or Detectron2 notices from a plain script's
SACTPredictor or from the benchmark's profiler, silenced by message only
(issue 24, item 6)."""
import os
import subprocess
import sys
import textwrap

from conftest import REPO

from sact_det.utils.noise import KINETO_QUIET_LEVEL, quiet_profiler_logs


def run_script(code: str, **env) -> subprocess.CompletedProcess:
    """``code`` as a plain script (Python's default warning filters, no pytest)."""
    environment = dict(os.environ, PYTHONPATH=REPO, **env)
    environment.pop("KINETO_LOG_LEVEL", None)
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
