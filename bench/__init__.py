"""bench: every stage timed side by side with the reference path, and the demo.

    python -m bench all --quick          # what `make bench` runs
    python -m bench embed --device cuda  # one benchmark, full size
    python -m bench.demo --out out/demo  # what `make demo` runs

Rows go to bench/results/<bench>.jsonl; bench/results/REPORT.md and the plots are
regenerated from all rows.
"""
