"""Reporting over finished runs: one record (model.py) rendered to the console, report.md and a
self-contained report.html; the run table, comparisons, serving levels, pictures, sweep reports.

    python -m evaluator.report results/ --compare
"""
