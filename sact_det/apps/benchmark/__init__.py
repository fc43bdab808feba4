"""``tools/benchmark.py``: SACT's sparse inference timed side by side with the
best dense version of the same network and with Detectron2's own, one job a
module: the compared models (:mod:`.models`), the tuned dense baseline
(:mod:`.tuned`), operating points (:mod:`.points`), timing (:mod:`.timing`),
the benchmark itself (:mod:`.runner`), a profile (:mod:`.profile`), the
dense/sparse crossover (:mod:`.crossover`) and the tables (:mod:`.tables`)."""
from sact_det.apps.benchmark.crossover import unit_crossover
from sact_det.apps.benchmark.profile import profile_point
from sact_det.apps.benchmark.runner import run_benchmark
from sact_det.apps.benchmark.tables import crossover_table, markdown_table, rows_as_dicts
from sact_det.apps.benchmark.timing import machine_description

__all__ = ["unit_crossover", "profile_point", "run_benchmark", "crossover_table", "markdown_table", "rows_as_dicts",
           "machine_description"]
