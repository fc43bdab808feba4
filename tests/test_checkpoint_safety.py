"""No checkpoint runs code while it is read, however it reaches the model:
MODEL.WEIGHTS of ``tools/train_net.py --eval-only`` and of the other tools,
``last_checkpoint`` with ``--resume`` (issue 23, serious item 1); and
checkpoint files that cannot be had are named (issue 23, minor items)."""
import os
import pickle

import numpy as np
import pytest
import torch
from conftest import config_path, load_tool

from detectron2.checkpoint import DetectionCheckpointer

from sact_det.apps.torchvision_weights import convert_torchvision_checkpoint
from sact_det.engine.checkpoint import SACTCheckpointer
from sact_det.engine.defaults import load_config
from sact_det.engine.train_net import command_line
from sact_det.utils.safe_load import UnsafeCheckpointError

TINY = config_path("synthetic/sact_tiny.yaml")
TEST_SIZES = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192",
              "DATALOADER.NUM_WORKERS", "0"]


class RunsACommand:
    """Pickles as ``os.system(command)``: what an attacker puts in a checkpoint."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.fixture(params=[".pkl", ".pth"])
def malicious(request, tmp_path):
    """(checkpoint file, marker file its payload would create), as Detectron2's model zoo
    (.pkl, pickled) or torch.save (.pth) would hold weights."""
    marker = tmp_path / "MARKER"
    payload = {"model": {"backbone.stem.conv1.weight": RunsACommand(f"touch {marker}")}, "__author__": "x"}
    path = tmp_path / f"weights{request.param}"
    if request.param == ".pkl":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path)
    return path, marker


def the_payload_would_run(path, marker):
    """The fixture's file is a working exploit for plain pickle (so a test that
    finds no marker shows the loader refused it, not that the payload failed)."""
    if path.suffix == ".pkl":
        with open(path, "rb") as f:
            pickle.load(f)
    else:
        torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()


def error_line(capsys):
    """The last line on stderr, which must be the only error: no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def refusal_line(capsys, path):
    line = error_line(capsys)
    assert f"error: {path}: refuses to load: the pickle asks for {os.system.__module__}.system" in line
    return line


def test_eval_only_refuses_malicious_weights(synthetic_root, malicious, tmp_path, capsys):
    path, marker = malicious
    with pytest.raises(SystemExit) as exit_:
        command_line(["--config-file", TINY, "--eval-only", *TEST_SIZES, "MODEL.WEIGHTS", str(path),
                      "OUTPUT_DIR", str(tmp_path / "eval")])
    assert exit_.value.code == 2
    refusal_line(capsys, path)
    assert not marker.exists()
    the_payload_would_run(path, marker)


def test_resume_refuses_a_malicious_last_checkpoint(synthetic_root, malicious, tmp_path, capsys):
    path, marker = malicious
    output = tmp_path / "run"
    output.mkdir()
    os.rename(path, output / f"model_0000009{path.suffix}")
    (output / "last_checkpoint").write_text(f"model_0000009{path.suffix}")
    with pytest.raises(SystemExit) as exit_:
        command_line(["--config-file", TINY, "--resume", *TEST_SIZES, "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()",
                      "OUTPUT_DIR", str(output)])
    assert exit_.value.code == 2
    refusal_line(capsys, output / f"model_0000009{path.suffix}")
    assert not marker.exists()


def test_visualize_ponder_refuses_malicious_weights(synthetic_root, malicious, tmp_path, capsys):
    path, marker = malicious
    status = load_tool("visualize_ponder").main([
        "--config-file", TINY, "--input", os.path.join(synthetic_root, "val"), "--output", str(tmp_path / "out"),
        "--opts", *TEST_SIZES, "MODEL.WEIGHTS", str(path)])
    assert status == 2
    refusal_line(capsys, path)
    assert not marker.exists()


def test_every_loader_of_the_package_refuses(malicious, tmp_path):
    """SACTCheckpointer, through which the predictor, the benchmark, the budget
    search, the trade-off and the export load, and the torchvision converter."""
    path, marker = malicious
    with pytest.raises(UnsafeCheckpointError):
        SACTCheckpointer(torch.nn.Linear(2, 2)).load(str(path))
    with pytest.raises(ValueError, match=str(path)):
        convert_torchvision_checkpoint(str(path), str(tmp_path / "converted.pkl"))
    assert not marker.exists()


PICKLES = {
    "model zoo": {"model": {"w": np.ones((2, 2), np.float32)}, "__author__": "torchvision",
                  "matching_heuristics": True},
    "caffe2 detection": {"blobs": {"conv1_w": np.ones(3, np.float32), "conv1_w_momentum": np.zeros(3, np.float32)},
                         "cfg": "..."},
    "msra imagenet": {"conv1_w": np.ones(3, np.float32), "res_conv1_bn_s": np.ones(3, np.float32)},
}


@pytest.mark.parametrize("kind", PICKLES)
def test_pickles_are_read_as_detectron2_reads_them(tmp_path, kind):
    """The same dict as Detectron2's own ``_load_file`` (model-zoo files as they
    are, Caffe2 blobs without their momenta, for name matching)."""
    path = tmp_path / "weights.pkl"
    path.write_bytes(pickle.dumps(PICKLES[kind], protocol=2))
    ours = SACTCheckpointer(torch.nn.Linear(2, 2))._load_file(str(path))
    theirs = DetectionCheckpointer(torch.nn.Linear(2, 2))._load_file(str(path))
    assert ours.keys() == theirs.keys() and ours["model"].keys() == theirs["model"].keys()
    assert {k: v for k, v in ours.items() if k != "model"} == {k: v for k, v in theirs.items() if k != "model"}
    for key, value in theirs["model"].items():
        np.testing.assert_array_equal(ours["model"][key], value)


def test_weights_that_cannot_be_had_are_named(tmp_path, capsys):
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=f"checkpoint {tmp_path} is a directory: expected a checkpoint file"):
        SACTCheckpointer(model).load(str(tmp_path))
    with pytest.raises(SystemExit):
        load_config(TINY, ["MODEL.WEIGHTS", str(tmp_path)], load_tool("visualize_ponder").build_parser())
    assert f"error: MODEL.WEIGHTS: expected a checkpoint file, '{tmp_path}' is a directory" in capsys.readouterr().err
    url = "http://127.0.0.1:9/model_final.pth"  # nothing listens on the discard port: as without a network
    with pytest.raises(FileNotFoundError, match=f"checkpoint {url} cannot be downloaded .*Connection refused.*; "
                                                "download it yourself"):
        SACTCheckpointer(model).load(url)


def test_eval_only_with_an_unreachable_url_ends_with_one_line(synthetic_root, tmp_path, capsys):
    url = "http://127.0.0.1:9/model_final.pkl"
    with pytest.raises(SystemExit) as exit_:
        command_line(["--config-file", TINY, "--eval-only", *TEST_SIZES, "MODEL.WEIGHTS", url,
                      "OUTPUT_DIR", str(tmp_path)])
    assert exit_.value.code == 2
    assert f"error: checkpoint {url} cannot be downloaded" in error_line(capsys)
