"""``tools/train_net.py``, the whole program: arguments and config checked before
any process starts, training or evaluation in ``--num-gpus`` processes, one
line and a non-zero exit status for bad input or a diverged run."""
import contextlib
import logging
import os
import shlex
import sys

from torch.multiprocessing import ProcessExitedException

import detectron2.utils.comm as comm
from detectron2.engine import default_argument_parser, launch
from detectron2.evaluation import verify_results

from sact_det.engine.checkpoint import SACTCheckpointer
from sact_det.engine.defaults import _prepare, build_config, load_config
from sact_det.engine.trainer import SACTTrainer, TrainingDivergedError
from sact_det.utils.cli import ToolParser, add_override_arguments, run_tool
from sact_det.utils.errors import INPUT_ERROR_STATUS
from sact_det.utils.files import remove_stale_partials
from sact_det.utils.runs import OutputDirLock, exit_with_parent, prepare_output_dir

__all__ = ["main", "argument_parser", "launch_main", "command_line"]

logger = logging.getLogger("sact_det")


def _retry_command(args, lr: float, resume: bool) -> str:
    """The command that runs ``args``'s training again with ``SOLVER.BASE_LR lr``,
    with ``--resume`` (before the KEY VALUE overrides, which end the command line)
    when there is a checkpoint to continue from. ``lr`` is written as Python
    writes a float (``500.0``, ``0.01``, ``1e-05``): yacs takes ``500`` for an int
    and refuses it for the float key."""
    argv = ["--config-file", args.config_file]
    if args.num_gpus != 1:
        argv += ["--num-gpus", str(args.num_gpus)]
    if args.num_machines != 1:
        argv += ["--num-machines", str(args.num_machines), "--machine-rank", str(args.machine_rank),
                 "--dist-url", args.dist_url]
    opts = list(args.opts)
    kept = [x for key, value in zip(opts[::2], opts[1::2]) if key != "SOLVER.BASE_LR" for x in (key, value)]
    script = sys.argv[0] if sys.argv[0].endswith("train_net.py") else "tools/train_net.py"
    command = ["python", script, *argv, *(["--resume"] if resume else []), *kept, "SOLVER.BASE_LR", repr(float(lr))]
    return " ".join(shlex.quote(a) for a in command)


def main(args):
    """Evaluates (``--eval-only``) or trains. OUTPUT_DIR is checked first
    (:func:`~sact_det.utils.runs.prepare_output_dir`); a training run holds the
    lock of its OUTPUT_DIR (:class:`~sact_det.utils.runs.OutputDirLock`) from
    before it writes there, and removes what killed runs left half-written."""
    cfg = build_config(args)
    training = not args.eval_only
    if comm.is_main_process():
        prepare_output_dir(cfg.OUTPUT_DIR)
    with OutputDirLock(cfg.OUTPUT_DIR) if training and comm.is_main_process() else contextlib.nullcontext():
        _prepare(cfg, args)
        if training and comm.is_main_process():
            for path in remove_stale_partials(cfg.OUTPUT_DIR):
                logger.info(f"removed {path}, left half-written by a run that was killed")
        if not training:
            model = SACTTrainer.build_model(cfg)
            if not cfg.MODEL.WEIGHTS:
                logger.warning("--eval-only without MODEL.WEIGHTS evaluates an untrained model")
            SACTCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
            results = SACTTrainer.test(cfg, model)
            if comm.is_main_process():
                verify_results(cfg, results)
            return results
        trainer = SACTTrainer(cfg)
        trainer.resume_or_load(resume=args.resume, lr_from_config="SOLVER.BASE_LR" in args.opts[::2])
        try:
            return trainer.train()
        except TrainingDivergedError as e:
            command = _retry_command(args, e.suggested_lr, resume=e.last_checkpoint is not None)
            raise TrainingDivergedError(e.summary, f"{e.advice}: {command}", e.suggested_lr,
                                        e.last_checkpoint) from e.__cause__


def argument_parser() -> ToolParser:
    """Detectron2's ``tools/train_net.py`` arguments (``--config-file``,
    ``--eval-only``, ``--resume``, ``--num-gpus``, ..., ``KEY VALUE`` overrides,
    also after ``--opts`` as every sact-det tool takes them), with one-line errors."""
    detectron2_parser = default_argument_parser()
    parser = ToolParser(detectron2_parser.description, epilog=detectron2_parser.epilog,
                        parents=[detectron2_parser], add_help=False)
    add_override_arguments(parser)
    return parser


def _launched_main(args, launcher_pid: int):
    """:func:`main` as ``launch`` runs it. In a worker process (``--num-gpus`` > 1)
    it ends with the launcher, and bad input is printed here as one line
    (:func:`~sact_det.utils.cli.run_tool`; an exception would reach the
    launcher inside the worker's traceback) and ends the worker with
    ``INPUT_ERROR_STATUS``."""
    if os.getpid() == launcher_pid:
        return main(args)
    exit_with_parent(launcher_pid)

    def run():
        main(args)  # launch does not pass results back from workers
    status = run_tool(run)
    if status:
        sys.exit(status)


def launch_main(args):
    """:func:`main` in ``args.num_gpus`` processes per machine (Detectron2's ``launch``)."""
    return launch(_launched_main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                  dist_url=args.dist_url, args=(args, os.getpid()))


def _launch_and_wait(args) -> int:
    try:
        launch_main(args)
    except ProcessExitedException as e:
        if e.exit_code == INPUT_ERROR_STATUS:  # the worker printed its error line
            return INPUT_ERROR_STATUS
        raise
    return 0


def command_line(argv=None):
    """``tools/train_net.py``, the whole program: the arguments and the config
    are checked before any process starts; bad input (a file, key, checkpoint,
    a diverged run) ends with one ``error: ...`` line and exit status 2 instead
    of a traceback. Ends the process (``SystemExit``) with the run's status."""
    parser = argument_parser()
    args = parser.parse_args(argv)
    load_config(args.config_file, args.opts, parser)
    sys.exit(run_tool(lambda: _launch_and_wait(args), parser.prog))


if __name__ == "__main__":  # python -m sact_det.engine.train_net: tools/train_net.py without the source tree
    command_line()
