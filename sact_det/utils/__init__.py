"""What every layer may use: the error classes (:mod:`.errors`), files that
appear only when complete (:mod:`.files`), run locks (:mod:`.runs`), the
command-line helpers of the tools (:mod:`.cli`) and environment checks (:mod:`.env`)."""
