"""Config keys of sact-det (``add_sact_config``), in Detectron2's style."""
import difflib
import math
import os
import re

from detectron2.config import CfgNode as CN

from sact_det.config.modes import EXECUTIONS, HALTING_TYPES, HEAD_TYPES, UNITS_PER_DEPTH


def add_sact_config(cfg: CN) -> None:
    """Adds ``MODEL.SACT`` and ``DATASETS.COCO_JSON`` to a Detectron2 config, in place."""
    cfg.MODEL.SACT = CN()
    # "sact" (per-position halting, eq. 14), "act" (per-image, eq. 6), or
    # "none" (plain ResNet, for the non-adaptive baselines).
    cfg.MODEL.SACT.TYPE = "sact"
    # Ponder cost weight tau of eq. (13), applied to the feature extractor only (sec. 4.2).
    cfg.MODEL.SACT.TAU = 0.005
    # Epsilon of eq. (7).
    cfg.MODEL.SACT.EPS = 0.01
    # Initial halting bias b^l (sec. 4.1).
    cfg.MODEL.SACT.HALTING_BIAS_INIT = -3.0
    # Test-time compute knob: added to every halting logit at inference (> 0 halts
    # earlier: fewer FLOPs; < 0 later; 0 is the trained model). Not used in training.
    # tools/halting_budget.py finds the offset that meets a FLOPs budget.
    cfg.MODEL.SACT.TEST_HALTING_OFFSET = 0.0
    # Residual units of res2, res3, res4. Empty: all units of MODEL.RESNETS.DEPTH.
    # Fewer units build the non-adaptive baselines of sec. 4.1 (e.g. [3, 4, 13]),
    # which load the first units of each block from a full ResNet checkpoint.
    cfg.MODEL.SACT.NUM_UNITS = []
    # Residual units of block 4 (res5) in the box head (3 in every standard ResNet).
    cfg.MODEL.SACT.RES5_NUM_UNITS = 3
    # Box head: "none" (the paper's plain res5) or "act" (beyond the paper): ACT over
    # proposals, one halting score per proposal after every res5 unit but the last
    # (eq. 6, Alg. 1); needs RES5_NUM_UNITS >= 2.
    cfg.MODEL.SACT.HEAD_TYPE = "none"
    # Weight of the box head's ponder cost (mean rho over the sampled proposals),
    # the loss "loss_ponder_head"; TAU stays the feature extractor's. 0.01: on the
    # synthetic data it cut the head's FLOPs by 47 % at the plain head's AP; 0.05
    # saved only one percentage point more (RESULTS.md, "An adaptive box head").
    cfg.MODEL.SACT.HEAD_TAU = 0.01
    # Inference execution (sact_det.modeling.sparse): "dense" (masked, as in training),
    # "perforated" (sparse rows, sec. 2.3) or "tiled" (dense convolutions on active
    # k x k tiles). Training always runs dense.
    cfg.MODEL.SACT.EXECUTION = "dense"
    # k > 1: SACT halting scores shared within k x k tiles (sec. 2.3), needed by
    # "tiled" execution. It changes the model, so train with the same value.
    cfg.MODEL.SACT.TILE_SIZE = 1
    # Sparse execution runs a unit as dense convolutions on the whole map (keeping
    # the active positions) when more than this share of the map is active: at such
    # densities gathering costs more than it saves. > 1: never (pure perforated).
    # `tools/benchmark.py --crossover` measures where dense and sparse cross on a
    # machine (0.65-0.85 per block on 2 CPU cores; BENCHMARKS.md).
    cfg.MODEL.SACT.SPARSE_MAX_ACTIVE = 0.8
    # Reference for "% of dense" in FLOP reports: the dense feature extractor of
    # this ResNet depth (same widths) at the same image size. Table 1 uses 101.
    cfg.MODEL.SACT.FLOPS_REFERENCE_DEPTH = 101
    # COCO-format datasets to register before anything runs, as (name, json_file,
    # image_root) triples, e.g. (("my_train", "a.json", "images/"),); their class
    # names come from the json's categories. Name them in DATASETS.TRAIN / TEST.
    cfg.DATASETS.COCO_JSON = ()


def validate_sact_config(cfg: CN) -> None:
    """Raises ValueError naming the offending key when ``MODEL.SACT`` is inconsistent."""
    sact = cfg.MODEL.SACT
    if sact.TYPE not in HALTING_TYPES:
        raise ValueError(f"MODEL.SACT.TYPE must be one of {HALTING_TYPES}, got {sact.TYPE!r}")
    if not 0.0 < sact.EPS < 1.0:
        raise ValueError(f"MODEL.SACT.EPS must be in (0, 1) (eq. 7), got {sact.EPS}")
    if not isinstance(sact.TEST_HALTING_OFFSET, (int, float)) or not math.isfinite(sact.TEST_HALTING_OFFSET):
        raise ValueError("MODEL.SACT.TEST_HALTING_OFFSET must be a finite number (a logit offset), "
                         f"got {sact.TEST_HALTING_OFFSET!r}")
    if sact.TAU < 0:
        raise ValueError(f"MODEL.SACT.TAU must be >= 0 (eq. 13), got {sact.TAU}")
    for key, depth in (("MODEL.RESNETS.DEPTH", cfg.MODEL.RESNETS.DEPTH),
                       ("MODEL.SACT.FLOPS_REFERENCE_DEPTH", sact.FLOPS_REFERENCE_DEPTH)):
        if depth not in UNITS_PER_DEPTH:
            raise ValueError(f"{key} must be one of {sorted(UNITS_PER_DEPTH)} "
                             f"(bottleneck ResNets), got {depth}")
    units = list(sact.NUM_UNITS)
    if units and (len(units) != 3 or min(units) < 1):
        raise ValueError("MODEL.SACT.NUM_UNITS must be empty or three positive unit counts "
                         f"for res2, res3, res4, got {units}")
    if sact.EXECUTION not in EXECUTIONS:
        raise ValueError(f"MODEL.SACT.EXECUTION must be one of {EXECUTIONS}, got {sact.EXECUTION!r}")
    if sact.TILE_SIZE < 1 or (sact.EXECUTION == "tiled" and sact.TILE_SIZE < 2):
        raise ValueError(f"MODEL.SACT.TILE_SIZE must be >= 1, and >= 2 for tiled execution; "
                         f"got {sact.TILE_SIZE} with EXECUTION {sact.EXECUTION!r}")
    if sact.EXECUTION != "dense" and cfg.MODEL.RESNETS.NUM_GROUPS != 1:
        raise ValueError("sparse execution (MODEL.SACT.EXECUTION) needs MODEL.RESNETS.NUM_GROUPS 1")
    if sact.RES5_NUM_UNITS < 1:
        raise ValueError(f"MODEL.SACT.RES5_NUM_UNITS must be >= 1, got {sact.RES5_NUM_UNITS}")
    if sact.HEAD_TYPE not in HEAD_TYPES:
        raise ValueError(f"MODEL.SACT.HEAD_TYPE must be one of {HEAD_TYPES}, got {sact.HEAD_TYPE!r}")
    if sact.HEAD_TAU < 0:
        raise ValueError(f"MODEL.SACT.HEAD_TAU must be >= 0 (the box head's ponder cost weight), got {sact.HEAD_TAU}")
    if sact.HEAD_TYPE == "act" and sact.RES5_NUM_UNITS < 2:
        raise ValueError("MODEL.SACT.HEAD_TYPE act needs MODEL.SACT.RES5_NUM_UNITS >= 2 (a one-unit res5 "
                         f"cannot halt earlier), got {sact.RES5_NUM_UNITS}")
    validate_coco_json(cfg.DATASETS.COCO_JSON)


def validate_coco_json(entries) -> None:
    """Raises ValueError unless ``DATASETS.COCO_JSON`` is a sequence of
    (name, json_file, image_root) triples of non-empty strings, names unique."""
    expected = ("DATASETS.COCO_JSON must be a list of (name, json_file, image_root) triples, "
                "e.g. ((\"my_train\", \"train.json\", \"images/\"),)")
    if isinstance(entries, str) or not isinstance(entries, (list, tuple)):
        raise ValueError(f"{expected}; got {entries!r}")
    names = []
    for entry in entries:
        if (isinstance(entry, str) or not isinstance(entry, (list, tuple)) or len(entry) != 3
                or not all(isinstance(v, str) and v for v in entry)):
            raise ValueError(f"{expected}; got the entry {entry!r}")
        names.append(entry[0])
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"DATASETS.COCO_JSON names each dataset once; {repeated} appear more than once")


def units_per_block(cfg: CN):
    """Units of res2, res3, res4 for this config."""
    return tuple(cfg.MODEL.SACT.NUM_UNITS) or UNITS_PER_DEPTH[cfg.MODEL.RESNETS.DEPTH]


def fall_back_to_cpu(cfg: CN) -> bool:
    """Sets ``MODEL.DEVICE cpu`` when a CUDA device is asked for but absent, so
    that every command also runs on CPU-only machines. Returns whether it did."""
    import torch

    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
        return True
    return False


def _all_keys(node: CN, prefix: str = ""):
    for key, value in node.items():
        if isinstance(value, CN):
            yield from _all_keys(value, f"{prefix}{key}.")
        else:
            yield prefix + key


def _merge(cfg: CN, merge, source: str) -> None:
    """Runs a yacs merge; an unknown key becomes a KeyError naming the key, where
    it came from and the closest existing keys."""
    try:
        merge()
    except (KeyError, AssertionError) as e:
        match = re.search(r"Non-existent (?:config )?key: ([\w.]+)", str(e))
        if not match:
            raise
        key = match.group(1)
        close = difflib.get_close_matches(key, list(_all_keys(cfg)), n=3, cutoff=0.8)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise KeyError(f"unknown config key {key} in {source}{hint}") from None


def get_sact_cfg(config_file: str = None, opts=None) -> CN:
    """Detectron2's default config + ``MODEL.SACT``, merged with a YAML file
    (``_BASE_`` inheritance) and ``KEY VALUE`` overrides."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_sact_config(cfg)
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"config file {config_file!r} does not exist")
        _merge(cfg, lambda: cfg.merge_from_file(config_file), f"config file {config_file}")
    if opts:
        if len(opts) % 2:
            raise ValueError(f"config overrides must be KEY VALUE pairs, got {list(opts)}")
        _merge(cfg, lambda: cfg.merge_from_list(list(opts)), "the command-line overrides")
    validate_sact_config(cfg)
    return cfg
