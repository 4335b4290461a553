"""Synthesis (`mrgen synthesize`, paper §3.5): source masks → target-modality candidates → SAM2 filter → selection.

* ``config.py``     ``SynthesisConfig`` (section ``synthesis``; presets ``tiny`` and ``paper``)
* ``processor.py``  ``SynthesisProcessor``: ordered stages chained as lazy ``map_batches``
* ``stages/``       prepare (tasks) → generator (actors) → filter (actors) → selection (tasks) → records (tasks)
                    → writer (tasks, one flush of ``output.shard_rows`` a call); ``adaptive`` fuses generator and
                    filter (waves need the filter's verdict)
* ``run.py``        ``main(config)``: checks inputs, runs the processor, commits the index, writes metrics.prom,
                    contact_sheet.png and report.json
* selection rules (paper / official code) live in ``mrgen.models.selection``; SAM2 scoring in
  ``mrgen.models.sam2_scorer``.
"""
