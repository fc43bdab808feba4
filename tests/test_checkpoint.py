"""ImageNet checkpoints load into the SACT detector by name (sec. 4.1's two-stage training)."""
import pickle
import re

import pytest
import torch
from conftest import tiny_cfg

from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from sact_det.engine.checkpoint import CheckpointMismatchError, SACTCheckpointer


def imagenet_resnet_state(cfg):
    """A randomly initialised dense ResNet with res5, Detectron2 names, as a
    classification checkpoint would have after conversion (no 'backbone.')."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    torch.manual_seed(0)
    resnet = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    state = {k: v.clone() for k, v in resnet.state_dict().items()}
    for key, value in state.items():  # distinguishable from any initialisation
        if value.is_floating_point():
            value.add_(torch.rand_like(value))
    return state


def to_caffe2_names(state):
    """Inverse of Detectron2's Caffe2 name conversion, as in MSRA's R-*.pkl files
    (scale/bias only for frozen batch norm)."""
    blobs = {}
    for key, value in state.items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        name = key.replace("stem.conv1.norm.", "res_conv1.norm.").replace("stem.conv1.", "conv1.")
        name = name.replace(".shortcut.", ".branch1.").replace(".conv1.", ".branch2a.")
        name = name.replace(".conv2.", ".branch2b.").replace(".conv3.", ".branch2c.")
        name = re.sub(r"norm\.weight$", "bn.s", name)
        name = re.sub(r"norm\.bias$", "bn.b", name)
        name = re.sub(r"\.weight$", ".w", name)
        blobs[name.replace(".", "_")] = value.numpy()
    return blobs


def check_all_weights_arrived(model, state):
    model_state = model.state_dict()
    loaded = set()
    for key, value in state.items():
        target = f"roi_heads.{key}" if key.startswith("res5.") else f"backbone.{key}"
        assert torch.equal(model_state[target], value), target
        loaded.add(target)
    for key, value in model_state.items():
        if (key.startswith("backbone.") and ".halting." not in key) or key.startswith("roi_heads.res5."):
            if key not in loaded:  # MSRA files hold frozen BN as scale/bias: statistics are 0/1
                assert key.endswith(("running_mean", "running_var")), key
                assert torch.equal(value, torch.full_like(value, float(key.endswith("var"))))


@pytest.mark.parametrize("file_format", ["torchvision_converted", "caffe2_msra"])
def test_imagenet_checkpoint_loads_by_name(tmp_path, file_format):
    cfg = tiny_cfg("MODEL.RESNETS.NORM", "FrozenBN", "MODEL.SACT.RES5_NUM_UNITS", "3")
    state = imagenet_resnet_state(cfg)
    path = tmp_path / "R-tiny.pkl"
    if file_format == "torchvision_converted":  # what tools/convert-torchvision-to-d2.py writes
        payload = {"model": {k: v.numpy() for k, v in state.items()},
                   "__author__": "torchvision", "matching_heuristics": True}
    else:
        payload = to_caffe2_names(state)
        state = {k: v for k, v in state.items() if not k.endswith(("running_mean", "running_var"))}
    with open(path, "wb") as f:
        pickle.dump(payload, f)
    model = build_model(cfg)
    checkpointer = SACTCheckpointer(model)
    checkpointer.load(str(path))
    check_all_weights_arrived(model, state)
    halting = [k for k in model.state_dict() if ".halting." in k]
    assert halting and all(torch.isfinite(model.state_dict()[k]).all() for k in halting)


def test_shorter_baseline_loads_the_first_units(tmp_path):
    cfg = tiny_cfg("MODEL.RESNETS.NORM", "FrozenBN", "MODEL.SACT.TYPE", "none",
                   "MODEL.SACT.NUM_UNITS", "[2, 3, 4]", "MODEL.SACT.RES5_NUM_UNITS", "3")
    state = imagenet_resnet_state(cfg)
    path = tmp_path / "R-tiny.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in state.items()},
                     "__author__": "torchvision", "matching_heuristics": True}, f)
    model = build_model(cfg)
    SACTCheckpointer(model).load(str(path))
    kept = {k: v for k, v in state.items()
            if not re.match(r"res2\.2\.|res3\.3\.|res4\.[45]\.", k)}
    check_all_weights_arrived(model, kept)


def test_checkpoint_of_another_architecture_names_the_keys(tmp_path):
    cfg = tiny_cfg("MODEL.RESNETS.NORM", "FrozenBN", "MODEL.SACT.RES5_NUM_UNITS", "3")
    model = build_model(cfg)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["backbone.res3.1.conv2.weight"] = torch.zeros(7, 7, 3, 3)
    del state["roi_heads.res5.2.conv3.weight"]
    path = tmp_path / "model_final.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointMismatchError) as error:
        SACTCheckpointer(build_model(cfg)).load(str(path))
    message = str(error.value)
    assert str(path) in message
    assert "backbone.res3.1.conv2.weight: checkpoint (7, 7, 3, 3) vs model (32, 32, 3, 3)" in message
    assert "roi_heads.res5.2.conv3.weight" in message


def test_other_num_classes_keeps_detectron2_fine_tuning_behaviour(tmp_path):
    cfg = tiny_cfg()
    model = build_model(cfg)
    path = tmp_path / "model_final.pth"
    torch.save({"model": model.state_dict()}, path)
    other = build_model(tiny_cfg("MODEL.ROI_HEADS.NUM_CLASSES", "7"))
    SACTCheckpointer(other).load(str(path))  # predictor skipped with a warning, not an error
    assert torch.equal(other.state_dict()["backbone.res4.3.conv2.weight"],
                       model.state_dict()["backbone.res4.3.conv2.weight"])
