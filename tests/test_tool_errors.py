"""Bad command-line input ends a tool before any work with one ``error: ...``
line naming the argument and what was expected, no traceback (issue 10, item 7)."""
import os
import sys

import pytest
from conftest import REPO, config_path

from sact_det.engine.train_net import command_line

sys.path.insert(0, os.path.join(REPO, "tools"))
import benchmark  # noqa: E402
import eval_saliency  # noqa: E402
import visualize_ponder  # noqa: E402

TINY = config_path("synthetic/sact_tiny.yaml")
# A benchmark that would run in seconds if the arguments were accepted.
QUICK_BENCHMARK = ["--config-file", TINY, "--points", "50", "--executions", "dense", "--warmup", "0",
                   "--repeats", "1"]


def error_of(main, argv, capsys):
    """The ``error:`` line a tool exits with (status 2, argparse's)."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("argv, expected", [
    (["--sizes", "0x10"], "argument --sizes: expected HEIGHTxWIDTH with positive integers (e.g. 600x800), "
                          "got '0x10'"),
    (["--sizes", "600by800"], "argument --sizes: expected HEIGHTxWIDTH"),
    (["--repeats", "0"], "argument --repeats: expected a positive integer, got '0'"),
    (["--json", "/nonexistent/dir/rows.json"], "argument --json: cannot write /nonexistent/dir/rows.json: "
                                               "directory /nonexistent/dir does not exist"),
    (["--opts", "MODEL.SACT.TAUU", "0.1"], "unknown config key MODEL.SACT.TAUU in the command-line overrides; "
                                            "did you mean MODEL.SACT.TAU"),
])
def test_benchmark_arguments(argv, expected, capsys):
    assert "error: " + expected in error_of(benchmark.main, QUICK_BENCHMARK + argv, capsys)


def test_benchmark_json_into_a_directory(tmp_path, capsys):
    line = error_of(benchmark.main, QUICK_BENCHMARK + ["--json", str(tmp_path)], capsys)
    assert line.endswith(f"argument --json: cannot write {tmp_path}: it is a directory")


@pytest.mark.parametrize("argv, expected", [
    (["--size", "0", "10"], "argument --size: expected a positive integer, got '0'"),
    (["--sigmas", "-3"], "argument --sigmas: expected a number >= 0, got '-3'"),
    (["--gammas", "nan"], "argument --gammas: expected a number >= 0, got 'nan'"),
])
def test_eval_saliency_arguments(argv, expected, tmp_path, capsys):
    base = ["--config-file", TINY, "--cat2000", str(tmp_path), "--output", str(tmp_path / "out")]
    assert error_of(eval_saliency.main, base + argv, capsys).endswith("error: " + expected)


def test_eval_saliency_checks_the_dataset_first(tmp_path, capsys):
    line = error_of(eval_saliency.main, ["--config-file", TINY, "--cat2000", str(tmp_path),
                                         "--output", str(tmp_path / "out")], capsys)
    assert line.endswith(f"error: argument --cat2000: {tmp_path}/Stimuli does not exist: expected the CAT2000 "
                         "layout Stimuli/<category>/*.jpg with FIXATIONMAPS/ or FIXATIONLOCS/ beside it")


@pytest.mark.parametrize("extra, expected", [
    (["--ponder-range", "5", "1"], "argument --ponder-range: MIN must be less than MAX, got 5 1"),
    (["--score-threshold", "1.5"], "argument --score-threshold: expected a number between 0 and 1, got '1.5'"),
    (["--output", "{file}/sub"], "argument --output: cannot write into {file}/sub: {file} is not a directory"),
])
def test_visualize_ponder_arguments(extra, expected, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    argv = ["--config-file", TINY, "--input", str(tmp_path), "--output", str(tmp_path / "out")]
    argv += [x.format(file=a_file) for x in extra]
    line = error_of(visualize_ponder.main, argv, capsys)
    assert line.endswith("error: " + expected.format(file=a_file))
    assert not os.path.exists(tmp_path / "out")  # nothing written


def test_train_net_config_errors_before_any_process_starts(capsys):
    line = error_of(command_line, ["--config-file", TINY, "--num-gpus", "2", "SOLVER.BASE_LRR", "0.1"], capsys)
    assert ("error: unknown config key SOLVER.BASE_LRR in the command-line overrides; "
            "did you mean SOLVER.BASE_LR") in line
