"""What the command-line tools run, one module (or package) per tool: the
benchmark, the trade-off ladder, the halting budget, export, video, the
visualisers, dataset browsing, training curves, model analysis, the inference
demo (Detectron2's demo.py) and the training demo (``make demo``), the
GPU check and weight conversion. Nothing below ``apps`` imports from here."""
