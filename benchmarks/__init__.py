"""The benchmark suite of icl-dynamics: ``python -m benchmarks.run [--quick]`` (``make bench``).

One module per section (fastpaths, accuracy, peer_bench, growth, sweep_bench, exact), each with its own knobs
(``FULL`` and ``QUICK``), a ``run(knobs) -> dict``, its headline ``comparisons`` and its docs ``tables``;
``run`` lists them and writes results.json; ``report`` turns a results file into the tables of
docs/performance.md. Run from the repository root.
"""
