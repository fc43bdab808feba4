"""Saliency evaluation (sact_det.evaluation.saliency, tools/eval_saliency.py) and object agreement."""
import json
import os
import sys

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO, config_path
from scipy.io import savemat
from scipy.stats import mannwhitneyu

from sact_det.evaluation.metrics import auc_judd, object_auc, object_mask, roc_auc
from sact_det.evaluation.saliency import center_baseline, evaluate_cat2000, load_fixations, postprocess
from sact_det.modeling.maps import image_to_grid

sys.path.insert(0, os.path.join(REPO, "tools"))
import eval_saliency  # noqa: E402


def auc_judd_reference(saliency, fixations):
    """Line-by-line translation of the MIT benchmark's AUC_Judd.m (no jitter)."""
    s = saliency.astype(np.float64).ravel()
    s = (s - s.min()) / (s.max() - s.min())
    f = fixations.ravel()
    sth = s[f > 0]
    n_fix, n_pix = len(sth), len(s)
    thresholds = sorted(sth, reverse=True)
    tp, fp = [0.0], [0.0]
    for i, thresh in enumerate(thresholds, start=1):
        above = int(np.sum(s >= thresh))
        tp.append(i / n_fix)
        fp.append((above - i) / (n_pix - n_fix))
    tp.append(1.0)
    fp.append(1.0)
    return sum((fp[k + 1] - fp[k]) * (tp[k + 1] + tp[k]) / 2 for k in range(len(tp) - 1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_judd_matches_the_benchmark_definition(seed):
    rng = np.random.RandomState(seed)
    saliency = cv2.GaussianBlur(rng.rand(40, 60), (0, 0), 3)
    saliency = np.round(saliency, 2)  # ties, handled as in the benchmark (>= threshold)
    fixations = rng.rand(40, 60) < 0.03
    ours = auc_judd(saliency, fixations, jitter=False)
    assert ours == pytest.approx(auc_judd_reference(saliency, fixations), abs=1e-12)
    # Without ties it is the Mann-Whitney AUC up to the interpolation between fixations.
    smooth = cv2.GaussianBlur(rng.rand(40, 60), (0, 0), 3)
    u = mannwhitneyu(smooth[fixations], smooth[~fixations]).statistic
    exact = u / (fixations.sum() * (~fixations).sum())
    assert abs(auc_judd(smooth, fixations, jitter=False) - exact) <= 1.0 / fixations.sum()


def test_auc_judd_extremes_and_errors():
    fixations = np.zeros((20, 20), bool)
    fixations[5, 5] = fixations[12, 3] = True
    assert auc_judd(fixations.astype(float), fixations) == pytest.approx(1.0, abs=1e-3)
    many = np.random.RandomState(0).rand(60, 60) < 0.1
    assert auc_judd(np.ones((60, 60)), many) == pytest.approx(0.5, abs=0.05)  # jitter breaks ties
    with pytest.raises(ValueError, match="no fixations"):
        auc_judd(np.ones((20, 20)), np.zeros((20, 20)))
    with pytest.raises(ValueError, match="differ in size"):
        auc_judd(np.ones((20, 21)), fixations)


def test_postprocess_is_eqs_15_to_18():
    ponder = np.random.RandomState(0).rand(30, 50) * 7 + 3
    plain = postprocess(ponder, 0, 0)
    assert plain.min() == 0 and plain.max() == pytest.approx(1)  # eqs. (15)-(16)
    blurred = postprocess(ponder, 4, 0)
    assert blurred.std() < plain.std()  # eq. (17)
    centre = center_baseline(30, 50)
    assert centre.max() == pytest.approx(1, abs=1e-2) and centre[15, 25] > centre[0, 0]
    assert np.allclose(postprocess(ponder, 4, 0.3) - blurred, 0.3 * centre)  # eq. (18)


def test_roc_auc_and_object_auc():
    labels = np.array([0, 0, 1, 1, 0, 1])
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9, 0.3, 0.7]), labels) == 1.0
    assert roc_auc(np.array([1, 1, 1, 1, 1, 1]), labels) == 0.5
    assert roc_auc(np.array([0.1, 0.4, 0.3, 0.9, 0.2, 0.35]), labels) == pytest.approx(7 / 9)  # 2 + 3 + 2 pairs
    objects = np.zeros((40, 64), bool)
    objects[:, :32] = True  # the left half of the image
    grid = torch.zeros(5, 8)  # stride-4 cells over a 20x32 network input
    grid[:, :4] = 3.0
    assert object_auc(grid, objects, (20, 32), 4) == 1.0
    assert object_auc(-grid, objects, (20, 32), 4) == 0.0
    assert object_auc(torch.ones(5, 8), objects, (20, 32), 4) == 0.5


def test_image_to_grid_counts_only_the_input():
    mask = np.ones((10, 10), bool)
    coverage = image_to_grid(mask, (10, 10), (3, 3), 4)  # cells overhang the 10x10 input
    assert np.allclose(coverage, 1.0)
    mask[:, 5:] = False
    coverage = image_to_grid(mask, (10, 10), (3, 3), 4)
    assert np.allclose(coverage[:, 0], 1.0) and np.allclose(coverage[:, 2], 0.0)
    assert np.allclose(coverage[:, 1], 0.25)


def test_object_mask_from_polygons_and_boxes():
    annotations = [{"bbox": [2, 3, 4, 5], "iscrowd": 0},
                   {"bbox": [10, 0, 5, 5], "segmentation": [[10, 0, 15, 0, 15, 5, 10, 5]], "iscrowd": 0},
                   {"bbox": [0, 0, 20, 20], "iscrowd": 1}]
    mask = object_mask(annotations, 20, 20)
    assert mask[3:8, 2:6].all() and mask[1, 11] and not mask[15, 15]
    assert mask.sum() == 4 * 5 + 25


def write_cat2000(root, size=(48, 64)):
    """Two categories of bright blobs on noise; fixations on the blobs. Plus one
    image of each kind that must be skipped."""
    rng = np.random.RandomState(0)
    height, width = size
    for category in ("Action", "Art"):
        for directory in ("Stimuli", "FIXATIONLOCS", "FIXATIONMAPS"):
            os.makedirs(root / directory / category, exist_ok=True)
        for index in range(6):
            image = (rng.rand(height, width, 3) * 60).astype(np.uint8)
            fixations = np.zeros((height, width), np.uint8)
            for _ in range(2):
                y, x = rng.randint(8, height - 8), rng.randint(8, width - 8)
                cv2.circle(image, (x, y), 6, (255, 255, 255), -1)
                fixations[y + rng.randint(-2, 3), x + rng.randint(-2, 3)] = 1
            cv2.imwrite(str(root / "Stimuli" / category / f"{index:03d}.jpg"), image)
            if index % 2:
                savemat(str(root / "FIXATIONLOCS" / category / f"{index:03d}.mat"), {"fixLocs": fixations})
            else:
                cv2.imwrite(str(root / "FIXATIONMAPS" / category / f"{index:03d}.png"), fixations * 255)
    art = root / "Stimuli" / "Art"
    cv2.imwrite(str(art / "100_missing.jpg"), np.zeros((height, width, 3), np.uint8))
    cv2.imwrite(str(art / "101_empty.jpg"), np.zeros((height, width, 3), np.uint8))
    savemat(str(root / "FIXATIONLOCS" / "Art" / "101_empty.mat"), {"fixLocs": np.zeros((height, width))})
    cv2.imwrite(str(art / "102_size.jpg"), np.zeros((height, width, 3), np.uint8))
    savemat(str(root / "FIXATIONLOCS" / "Art" / "102_size.mat"), {"fixLocs": np.ones((10, 10))})
    cv2.imwrite(str(art / "103_density.jpg"), np.zeros((height, width, 3), np.uint8))
    cv2.imwrite(str(root / "FIXATIONMAPS" / "Art" / "103_density.png"),
                (rng.rand(height, width) * 255).astype(np.uint8))


def test_cat2000_protocol_on_generated_data(tmp_path):
    write_cat2000(tmp_path)
    brightness = lambda rgb: rgb.mean(axis=2)[::4, ::4]  # a "ponder map" that finds the blobs
    result = evaluate_cat2000(brightness, str(tmp_path), size=(64, 48), sigmas=(0, 2), gammas=(0, 0.5))
    reasons = {os.path.basename(s): r for s, r in result.skipped}
    assert set(reasons) == {"100_missing.jpg", "101_empty.jpg", "102_size.jpg", "103_density.jpg"}
    assert reasons["100_missing.jpg"] == "no fixation file" and reasons["101_empty.jpg"] == "no fixations"
    assert "differ in size" in reasons["102_size.jpg"] and "continuous" in reasons["103_density.jpg"]
    # First half of each category tunes, the second half is reported.
    assert set(result.categories) == {"Action", "Art"}
    assert all(c["images"] == 3 for c in result.categories.values()) and result.overall["images"] == 6
    assert result.sigma in (0, 2) and result.gamma in (0, 0.5)
    assert result.overall["auc_judd"] > 0.9 > result.overall["center_auc_judd"]
    first = result.images[0]
    fixations = load_fixations(first["fixations"])
    rgb = cv2.cvtColor(cv2.imread(first["stimulus"]), cv2.COLOR_BGR2RGB)
    expected = auc_judd(cv2.resize(postprocess(cv2.resize(brightness(rgb).astype(np.float32), (64, 48),
                                                          interpolation=cv2.INTER_NEAREST),
                                               result.sigma, result.gamma).astype(np.float32), (64, 48)),
                        fixations)
    assert first["auc_judd"] == pytest.approx(expected)


def test_eval_saliency_tool(tmp_path, capsys):
    write_cat2000(tmp_path / "cat2000")
    out = tmp_path / "out"
    status = eval_saliency.main(["--config-file", config_path("synthetic/sact_tiny.yaml"),
                                 "--cat2000", str(tmp_path / "cat2000"), "--output", str(out),
                                 "--size", "64", "48", "--sigmas", "0", "2", "--gammas", "0", "0.5",
                                 "--figures", "2", "--opts", "MODEL.DEVICE", "cpu"])
    assert status == 0
    report = json.load(open(out / "saliency.json"))
    assert report["overall"]["images"] == 6 and len(report["skipped"]) == 4
    assert 0 <= report["overall"]["auc_judd"] <= 1
    assert os.path.getsize(out / "fig11_00.png") > 1000 and os.path.exists(out / "saliency.csv")
    assert "overall" in capsys.readouterr().out


def test_missing_layout_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="Stimuli"):
        evaluate_cat2000(lambda rgb: rgb[..., 0], str(tmp_path))
