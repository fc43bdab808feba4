"""What the command-line tools run, one module (or package) per tool: the
benchmark, the trade-off ladder, the halting budget, export, video, the
visualisers, dataset browsing, training curves, model analysis, the demo, the
GPU check and weight conversion. Nothing below ``apps`` imports from here."""
