"""Config keys of sact-det (``add_sact_config``), in Detectron2's style."""
import difflib
import math
import os
import re

from detectron2.config import CfgNode as CN

from sact_det.config.modes import (CLASSIFIER_META_ARCHITECTURE, EXECUTIONS, HALTING_PADDINGS, HALTING_TYPES,
                                   HEAD_TYPES, RES5_UNITS, UNIT_TYPES, UNITS_PER_DEPTH)


def add_sact_config(cfg: CN) -> None:
    """Adds ``MODEL.SACT``, ``MODEL.CLASSIFIER``, ``INPUT.CLS``, ``TEST.IMS_PER_BATCH``,
    ``DATASETS.COCO_JSON`` and ``DATASETS.IMAGE_FOLDERS`` to a Detectron2 config, in place."""
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
    # Residual units of block 4 (res5), in the box head or in the classifier's
    # backbone (3 in every standard ResNet).
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
    # Residual units: "post_activation" (Detectron2's BottleneckBlock, which MSRA's and
    # torchvision's ImageNet ResNets use) or "pre_activation" (He et al. 2016, the
    # paper's ImageNet models, section 2.1: BN and ReLU before each convolution, the
    # stride in the 3x3 convolution, a final BN + ReLU "postnorm" after res5;
    # sact_det.modeling.preact). Pre-activation units run with EXECUTION dense only.
    cfg.MODEL.SACT.UNIT_TYPE = "post_activation"
    # The authors' halting branch (official resnet_act.py): a batch norm (MODEL.RESNETS.NORM)
    # on the unit output before the 3x3 term and another on the pooled features before
    # the linear term of eq. (14). Needed to load their checkpoints; the sparse
    # executors fold both into the halting weights. With NORM "BN" the pooled
    # features' batch norm needs at least 2 images per process in training.
    cfg.MODEL.SACT.HALTING_NORM = False
    # Padding of the halting branch's 3x3 term: "zeros" (the paper's and TensorFlow's
    # "SAME") or "replicate" (each image's border cells repeated). Zero padding of raw
    # unit outputs lowers the halting logits along the border (issue 27).
    cfg.MODEL.SACT.HALTING_PADDING = "zeros"

    # The ImageNet-stage classifier (MODEL.META_ARCHITECTURE SACTClassifier): global
    # average pooling of res5 and a linear layer; loss = cross-entropy + TAU x ponder cost.
    cfg.MODEL.CLASSIFIER = CN()
    cfg.MODEL.CLASSIFIER.NUM_CLASSES = 1000
    # Label smoothing of the cross-entropy (the official training uses 0.1).
    cfg.MODEL.CLASSIFIER.LABEL_SMOOTHING = 0.0
    # Classifier inputs (sact_det.data.classification): training takes a random crop of
    # TRAIN_MIN_AREA..1 of the image area (aspect 3/4..4/3) resized to TRAIN_SIZE x TRAIN_SIZE,
    # flipped per INPUT.RANDOM_FLIP; evaluation resizes the shorter side to TEST_RESIZE
    # and takes the central TEST_SIZE x TEST_SIZE crop. The predictor and the ponder-map
    # tools use INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST on whole images instead.
    cfg.INPUT.CLS = CN()
    cfg.INPUT.CLS.TRAIN_SIZE = 224
    cfg.INPUT.CLS.TRAIN_MIN_AREA = 0.08
    cfg.INPUT.CLS.TEST_RESIZE = 256
    cfg.INPUT.CLS.TEST_SIZE = 224
    # Images per batch when the classifier is evaluated (the detector evaluates one at a time).
    cfg.TEST.IMS_PER_BATCH = 1
    # COCO-format datasets to register before anything runs, as (name, json_file,
    # image_root) triples, e.g. (("my_train", "a.json", "images/"),); their class
    # names come from the json's categories. Name them in DATASETS.TRAIN / TEST.
    cfg.DATASETS.COCO_JSON = ()
    # Classification datasets to register, as (name, directory) pairs, e.g.
    # (("flowers_train", "data/flowers/train"),): one sub-directory of images per
    # class (ImageNet's layout), classes in sorted order. Name them in DATASETS.TRAIN / TEST.
    cfg.DATASETS.IMAGE_FOLDERS = ()


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
    if sact.UNIT_TYPE not in UNIT_TYPES:
        raise ValueError(f"MODEL.SACT.UNIT_TYPE must be one of {UNIT_TYPES}, got {sact.UNIT_TYPE!r}")
    if not isinstance(sact.HALTING_NORM, bool):
        raise ValueError(f"MODEL.SACT.HALTING_NORM must be True or False, got {sact.HALTING_NORM!r}")
    if sact.HALTING_PADDING not in HALTING_PADDINGS:
        raise ValueError(f"MODEL.SACT.HALTING_PADDING must be one of {HALTING_PADDINGS}, got {sact.HALTING_PADDING!r}")
    if sact.EXECUTION != "dense":
        spatial_padding = sact.HALTING_PADDING if sact.TYPE == "sact" else "zeros"  # ACT has no 3x3 term
        unsupported = [f"MODEL.SACT.{key} {value}" for key, value, default in (
            ("UNIT_TYPE", sact.UNIT_TYPE, "post_activation"), ("HALTING_PADDING", spatial_padding, "zeros"))
            if value != default]
        if unsupported:
            raise ValueError(f"MODEL.SACT.EXECUTION {sact.EXECUTION} does not support {' and '.join(unsupported)} "
                             "(the sparse executors fold post-activation units and zero-padded halting "
                             "branches); use MODEL.SACT.EXECUTION dense")
    validate_classifier_config(cfg)
    validate_coco_json(cfg.DATASETS.COCO_JSON)
    validate_image_folders(cfg.DATASETS.IMAGE_FOLDERS)


def validate_classifier_config(cfg: CN) -> None:
    """Raises ValueError naming the key when ``MODEL.CLASSIFIER``, ``INPUT.CLS`` or
    ``TEST.IMS_PER_BATCH`` is out of range."""
    classifier, sizes = cfg.MODEL.CLASSIFIER, cfg.INPUT.CLS
    if classifier.NUM_CLASSES < 1:
        raise ValueError(f"MODEL.CLASSIFIER.NUM_CLASSES must be >= 1, got {classifier.NUM_CLASSES}")
    if not 0.0 <= classifier.LABEL_SMOOTHING < 1.0:
        raise ValueError(f"MODEL.CLASSIFIER.LABEL_SMOOTHING must be in [0, 1), got {classifier.LABEL_SMOOTHING}")
    for key in ("TRAIN_SIZE", "TEST_RESIZE", "TEST_SIZE"):
        if sizes[key] < 1:
            raise ValueError(f"INPUT.CLS.{key} must be a positive number of pixels, got {sizes[key]}")
    if sizes.TEST_SIZE > sizes.TEST_RESIZE:
        raise ValueError(f"INPUT.CLS.TEST_SIZE ({sizes.TEST_SIZE}) is the central crop of the image resized to "
                         f"INPUT.CLS.TEST_RESIZE ({sizes.TEST_RESIZE}): it cannot be larger")
    if not 0.0 < sizes.TRAIN_MIN_AREA <= 1.0:
        raise ValueError(f"INPUT.CLS.TRAIN_MIN_AREA must be in (0, 1] (a share of the image area), "
                         f"got {sizes.TRAIN_MIN_AREA}")
    if cfg.TEST.IMS_PER_BATCH < 1:
        raise ValueError(f"TEST.IMS_PER_BATCH must be >= 1, got {cfg.TEST.IMS_PER_BATCH}")


def _validate_named_entries(key: str, entries, fields: tuple, example: str) -> None:
    """Raises ValueError unless ``entries`` (config ``key``) is a sequence of
    tuples of ``fields`` non-empty strings, the first a name used once."""
    kind = {2: "pairs", 3: "triples"}[len(fields)]
    expected = f"{key} must be a list of ({', '.join(fields)}) {kind}, e.g. {example}"
    if isinstance(entries, str) or not isinstance(entries, (list, tuple)):
        raise ValueError(f"{expected}; got {entries!r}")
    names = []
    for entry in entries:
        if (isinstance(entry, str) or not isinstance(entry, (list, tuple)) or len(entry) != len(fields)
                or not all(isinstance(v, str) and v for v in entry)):
            raise ValueError(f"{expected}; got the entry {entry!r}")
        names.append(entry[0])
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{key} names each dataset once; {repeated} appear more than once")


def validate_image_folders(entries) -> None:
    """Raises ValueError unless ``DATASETS.IMAGE_FOLDERS`` is a sequence of
    (name, directory) pairs of non-empty strings, names unique."""
    _validate_named_entries("DATASETS.IMAGE_FOLDERS", entries, ("name", "directory"),
                            '(("my_train", "data/train"),)')


def validate_coco_json(entries) -> None:
    """Raises ValueError unless ``DATASETS.COCO_JSON`` is a sequence of
    (name, json_file, image_root) triples of non-empty strings, names unique."""
    _validate_named_entries("DATASETS.COCO_JSON", entries, ("name", "json_file", "image_root"),
                            '(("my_train", "train.json", "images/"),)')


def units_per_block(cfg: CN):
    """Units of res2, res3, res4 (and res5: ``MODEL.SACT.RES5_NUM_UNITS``) for this config."""
    return (tuple(cfg.MODEL.SACT.NUM_UNITS) or UNITS_PER_DEPTH[cfg.MODEL.RESNETS.DEPTH]) + (cfg.MODEL.SACT.RES5_NUM_UNITS,)


def is_classifier(cfg: CN) -> bool:
    """Whether the config builds the ImageNet-stage classifier (not the detector)."""
    return cfg.MODEL.META_ARCHITECTURE == CLASSIFIER_META_ARCHITECTURE


def reference_units_per_block(depth: int):
    """Units of res2-res5 of the standard ResNet of ``depth`` (the "% of dense" reference)."""
    return UNITS_PER_DEPTH[depth] + (RES5_UNITS,)


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
