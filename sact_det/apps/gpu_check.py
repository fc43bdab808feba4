"""One GPU check, in priority order, within a time budget (``tools/gpu_check.sh``).

1. correctness on CUDA: perforated and tiled equal dense (float32 with TF32
   off, at the CPU tests' tolerance; bfloat16 at a stated tolerance), and the
   same detections;
2. feature-extractor latency, batch 1, 800x1333 and 600x800, bfloat16 and
   float32, at 100/56/25 % FLOPs, against Detectron2's dense backbone (stock
   and tuned: folded batch norm, channels-last), synchronised medians;
3. the whole detector, the same way (float32);
4. training: iteration time and peak memory of SACT (masked dense, as
   trained) against Detectron2's R-C4, 2 images per batch, 600 px, AMP.

A part that would not fit in the time left is skipped with a note. Everything
is written to ``OUT/gpu_check.md`` (tables) and ``OUT/gpu_check.json``.
It also runs on a CPU (``--device cpu``, small sizes) as a dry run.
"""
import json
import os
import time
from typing import Callable, Dict, List

import torch

from sact_det.apps.benchmark.runner import run_benchmark
from sact_det.apps.benchmark.tables import markdown_table, rows_as_dicts
from sact_det.config import get_config_file, get_sact_cfg

__all__ = ["run_gpu_check"]

def _config(name: str, device: str, *opts):
    return get_sact_cfg(get_config_file(name), ["MODEL.DEVICE", device, "MODEL.WEIGHTS", "", *opts])


@torch.no_grad()
def check_correctness(device: str, size=(320, 448)) -> List[str]:
    """Perforated and tiled against dense on ``device``, R-101 with random
    weights and a mixed halting pattern; float32 (TF32 off) and bfloat16."""
    from sact_det.apps.benchmark.models import build_compared_models
    from sact_det.apps.benchmark.points import benchmark_image, calibrate, flops_pct, set_halting_profile

    lines = ["| dtype | execution | FLOPs % | N maps differ (positions) | max |feature diff| / max |feature| |",
             "|---|---|---:|---:|---:|"]
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    for dtype in (torch.float32, torch.bfloat16):
        cfg = _config("sact_faster_rcnn.yaml", device, "MODEL.SACT.TILE_SIZE", "8")
        model, _ = build_compared_models(cfg, torch.device(device), dtype)
        backbone = model.backbone
        x = benchmark_image(cfg, *size).to(device=device, dtype=dtype)
        set_halting_profile(backbone, x)
        backbone.execution = "perforated"
        _, reached = calibrate(backbone, lambda: flops_pct(backbone, x), 56.0, steps=10)
        backbone.execution = "dense"
        dense_features, dense_outputs = backbone.forward_with_sact(x, [size])
        for execution in ("perforated", "tiled"):
            backbone.execution = execution
            features, outputs = backbone.forward_with_sact(x, [size])
            flips = sum(int((dense_outputs[k].num_units_map != outputs[k].num_units_map).sum()) for k in outputs)
            reference = dense_features["res4"].float()
            diff = float((features["res4"].float() - reference).abs().max() / reference.abs().max())
            lines.append(f"| {str(dtype)[6:]} | {execution} | {reached:.1f} | {flips} | {diff:.2e} |")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    # The detector: the same detections in every execution (tiny model, float32).
    cfg = _config("synthetic/sact_tiny.yaml", device, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
                  "MODEL.SACT.TILE_SIZE", "4")
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    model = build_model(cfg).eval()
    for stage in model.backbone.stages:
        for branch in stage.halting:
            branch.bias.data.fill_(-1.0)
            branch.spatial_logit.weight.data.normal_(0, 0.02)
    images = [{"image": torch.rand(3, 256, 320, device=device) * 255}]
    results = {}
    for execution in ("dense", "perforated", "tiled"):
        model.backbone.execution = model.roi_heads.execution = execution
        results[execution] = model(images)[0]["instances"]
    for execution in ("perforated", "tiled"):
        same = (len(results[execution]) == len(results["dense"])
                and torch.allclose(results[execution].scores, results["dense"].scores, atol=1e-4))
        lines.append(f"\ndetector, {execution} vs dense (float32): {len(results[execution])} vs "
                     f"{len(results['dense'])} detections, same scores: {same}")
    return lines


def check_training(device: str, iterations: int = 20, size: int = 600) -> List[str]:
    """Iteration time and peak memory of SACT (masked dense) and Detectron2's
    R-C4, 2 images per batch, AMP (bfloat16 autocast), losses finite. From
    random weights, so both use trainable batch norm (``NORM BN``): with frozen
    identity statistics a random ResNet-101's activations overflow."""
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage

    lines = ["| model | median iteration ms | peak memory MiB | losses finite |", "|---|---:|---:|---|"]
    for label, opts in (("detectron2 R-C4", ["MODEL.META_ARCHITECTURE", "GeneralizedRCNN", "MODEL.BACKBONE.NAME",
                                             "build_resnet_backbone", "MODEL.ROI_HEADS.NAME", "Res5ROIHeads"]),
                        ("SACT R-101 (as trained)", [])):
        cfg = _config("sact_faster_rcnn.yaml", device, "MODEL.RESNETS.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", "0",
                      *opts)
        torch.manual_seed(0)
        model = build_model(cfg).to(device).train()
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
        generator = torch.Generator().manual_seed(0)
        batch = []
        for _ in range(2):
            image = torch.rand(3, size, int(size * 4 / 3), generator=generator) * 255
            boxes = torch.tensor([[50.0, 60.0, 250.0, 300.0], [300.0, 100.0, 500.0, 400.0]])
            batch.append({"image": image.to(device), "instances": Instances(
                (size, int(size * 4 / 3)), gt_boxes=Boxes(boxes), gt_classes=torch.tensor([1, 5])).to(device)})
        times, finite = [], True
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with EventStorage():
            for _ in range(iterations):
                start = time.perf_counter()
                with torch.autocast(device_type=device, dtype=torch.bfloat16):
                    losses = model(batch)
                loss = sum(losses.values())
                finite &= bool(torch.isfinite(loss))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if device == "cuda":
                    torch.cuda.synchronize()
                times.append(1000 * (time.perf_counter() - start))
        peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device == "cuda" else float("nan")
        steady = sorted(times[min(5, len(times) - 1):])
        lines.append(f"| {label} | {steady[len(steady) // 2]:.1f} | {peak:.0f} | {finite} |")
        del model, optimizer
    return lines


def run_gpu_check(out_dir: str, device: str = "cuda", budget_s: float = 270.0, repeats: int = 20,
                  sizes=((800, 1333), (600, 800)), points=(100.0, 56.0, 25.0), train_size: int = 600,
                  train_iterations: int = 20) -> Dict:
    """Runs the parts in order while time is left; writes the tables and returns them."""
    start = time.time()
    os.makedirs(out_dir, exist_ok=True)
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "torch": torch.__version__, "budget_s": budget_s, "parts": {}, "skipped": []}

    def elapsed() -> float:
        return time.time() - start

    def part(name: str, needs_s: float, fn: Callable[[], List[str]]) -> None:
        if elapsed() + needs_s > budget_s:
            report["skipped"].append(f"{name}: needs about {needs_s:.0f} s, {budget_s - elapsed():.0f} s left")
            return
        began = time.time()
        try:
            report["parts"][name] = {"lines": fn(), "seconds": time.time() - began}
        except Exception as e:  # noqa: BLE001 - a failing part is reported, the next ones still run
            report["parts"][name] = {"lines": [f"FAILED: {type(e).__name__}: {e}"], "seconds": time.time() - began}
        _write(out_dir, report)

    def latency(dtype, detector=False):
        def run():
            cfg = _config("sact_faster_rcnn.yaml", device)
            rows = run_benchmark(cfg, sizes if not detector else sizes[-1:], points, ["perforated", "tiled"], 8,
                                 warmup=3, repeats=repeats if not detector else max(5, repeats // 4), dtype=dtype,
                                 detector=detector, log=lambda line: None)
            report.setdefault("rows", []).extend(rows_as_dicts(rows))
            return markdown_table(rows).splitlines()
        return run

    part("correctness", 40, lambda: check_correctness(device))
    part("feature extractor, bfloat16", 50, latency(torch.bfloat16))
    part("feature extractor, float32", 50, latency(torch.float32))
    part("whole detector, float32", 60, latency(torch.float32, detector=True))
    part("training, AMP", 40, lambda: check_training(device, train_iterations, train_size))
    report["seconds"] = elapsed()
    _write(out_dir, report)
    return report


def _write(out_dir: str, report: Dict) -> None:
    lines = [f"# GPU check: {report['device']}, torch {report['torch']}", ""]
    for name, result in report["parts"].items():
        lines += [f"## {name} ({result['seconds']:.0f} s)", "", *result["lines"], ""]
    lines += [f"skipped: {s}" for s in report["skipped"]]
    with open(os.path.join(out_dir, "gpu_check.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out_dir, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
