"""What every layer may use: the error classes (:mod:`.errors`), files that
appear only when complete (:mod:`.files`), run locks (:mod:`.runs`), the
command-line helpers of the tools (:mod:`.cli`: argument checks, config overrides, one-line
errors), environment checks (:mod:`.env`) and PyTorch's and Detectron2's notices
silenced by message (:mod:`.noise`)."""
