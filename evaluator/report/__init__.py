"""Reporting over finished runs: the run table, comparisons, serving levels, pictures, sweep reports.

    python -m evaluator.report results/ --compare
"""
