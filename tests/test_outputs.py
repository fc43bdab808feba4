"""What a run writes: an OUTPUT_DIR that cannot be written is named before any
work, a full disk ends with one line naming the file, no output is written
through a symbolic link the run did not make, and what killed runs left
half-written is removed at the next start (issue 23, minor items)."""
import errno
import io
import os
import resource
import signal
import subprocess
import sys

import pytest
import torch
from conftest import REPO, config_path

from sact_det.engine import checkpoint as checkpoint_module
from sact_det.engine.checkpoint import SACTCheckpointer
from sact_det.engine.train_net import command_line
from sact_det.utils.errors import OutputWriteError
from sact_det.utils.files import partial_name, remove_stale_partials

TINY = config_path("synthetic/sact_tiny.yaml")
# One training iteration at test sizes, no evaluation.
ONE_ITERATION = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192",
                 "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
                 "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "DATASETS.TEST", "()",
                 "SOLVER.MAX_ITER", "1"]


def error_of(argv, capsys):
    """(exit status, last stderr line) of tools/train_net.py's whole program."""
    with pytest.raises(SystemExit) as exit_:
        command_line(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return exit_.value.code, err.strip().splitlines()[-1]


def test_output_dir_under_a_regular_file(synthetic_root, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    status, line = error_of(["--config-file", TINY, *ONE_ITERATION, "OUTPUT_DIR", str(a_file / "run")], capsys)
    assert status == 2
    assert line.endswith(f"error: OUTPUT_DIR {a_file}/run: cannot write there ({a_file} is not a directory)")
    assert a_file.read_text() == "mine"


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs sysfs, where nobody may create directories")
def test_unwritable_output_dir_is_named(synthetic_root, capsys):
    status, line = error_of(["--config-file", TINY, "--eval-only", *ONE_ITERATION, "OUTPUT_DIR", "/sys/kernel/run"],
                            capsys)
    assert status == 2 and "error: OUTPUT_DIR /sys/kernel/run: cannot write there (" in line


@pytest.mark.parametrize("name", ["config.yaml", "log.txt", "metrics.json", "training.lock"])
def test_outputs_are_not_written_through_a_planted_link(synthetic_root, tmp_path, capsys, name):
    """Refused, naming the link; the file it points to is left as it was."""
    output = tmp_path / "run"
    output.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.symlink(victim, output / name)
    status, line = error_of(["--config-file", TINY, *ONE_ITERATION, "OUTPUT_DIR", str(output)], capsys)
    assert status == 2
    assert line.endswith(f"error: OUTPUT_DIR {output}: {name} is a symbolic link (to {victim}), which this run did "
                         "not make; runs do not write through links: remove it, or choose another OUTPUT_DIR")
    assert victim.read_text() == "precious\n"
    assert os.path.islink(output / name)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_partial_files_are_removed_at_the_next_start(synthetic_root, tmp_path):
    output = tmp_path / "run"
    output.mkdir()
    dead = _dead_pid()
    stale = [f".model_0000009.partial-{dead}.pth", f".last_checkpoint.partial-{dead}"]
    kept = [os.path.basename(partial_name("model_0000019.pth")),  # this process is alive: someone's write
            f".model.partial-{dead}x.pth", f"model.partial-{dead}.pth", "notes.txt"]  # not ours
    for name in stale + kept:
        (output / name).write_bytes(b"half")
    (output / f".dataset.partial-{dead}").mkdir()  # a directory a killed writer filled
    (output / f".dataset.partial-{dead}" / "000001.jpg").write_bytes(b"half")
    with pytest.raises(SystemExit) as exit_:
        command_line(["--config-file", TINY, *ONE_ITERATION, "OUTPUT_DIR", str(output)])
    assert exit_.value.code == 0
    left = set(os.listdir(output))
    assert not left & set(stale + [f".dataset.partial-{dead}"])
    assert set(kept) <= left and "model_final.pth" in left


def test_stale_partials_of_this_process_are_kept(tmp_path):
    mine = tmp_path / os.path.basename(partial_name("x.pth"))
    mine.write_bytes(b"")
    assert remove_stale_partials(str(tmp_path)) == [] and mine.exists()


class FullDisk(io.RawIOBase):
    """A file on a disk with ``room`` bytes left: writes beyond it fail with ENOSPC, as the kernel's do."""

    def __init__(self, path, room):
        self.real, self.room = open(path, "wb"), room

    def writable(self):
        return True

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.real.write(data)

    def close(self):
        self.real.close()
        super().close()


def test_a_full_disk_while_saving_names_the_checkpoint(tmp_path, monkeypatch):
    checkpointer = SACTCheckpointer(torch.nn.Linear(64, 64), save_dir=str(tmp_path))
    checkpointer.save("model_0000001")
    monkeypatch.setattr(checkpoint_module, "open", lambda path, mode: FullDisk(path, 2000), raising=False)
    with pytest.raises(OutputWriteError) as error:
        checkpointer.save("model_0000003")
    assert str(error.value) == f"cannot write {tmp_path / 'model_0000003.pth'}: No space left on device"
    assert isinstance(error.value, OSError)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]  # no partial file left


def _file_size_limit(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write instead of a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_refused_checkpoint_write_ends_the_tool_with_one_line(synthetic_root, tmp_path):
    """A real refusal of the kernel (a file size limit: EFBIG, as ENOSPC for a full
    disk) while torch writes a checkpoint, where torch's own error is
    ``inline_container.cc: unexpected pos``."""
    output = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", TINY, *ONE_ITERATION,
         "OUTPUT_DIR", str(output)], capture_output=True, text=True, preexec_fn=_file_size_limit(2 ** 21),
        env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"train_net.py: error: cannot write {output / 'model_final.pth'}: File too large")
    assert not [name for name in os.listdir(output) if ".partial-" in name]
