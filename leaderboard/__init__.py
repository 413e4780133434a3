"""The GPT-2 speedrun leaderboard: stored runs, the statistics engine, and the generated tables and page.

    python -m leaderboard add RUN_DIR...     # check and file runs (store.py, evidence.py, pins.py)
    python -m leaderboard verify ENTRY       # re-run an entry's runs and compare (verify.py, harness.replay)
    python -m leaderboard render             # regenerate README.md, dev/README.md, stats.md, index.html

``harness.stats`` is the only place statistics are computed; see leaderboard/README.md for the rule.
"""
