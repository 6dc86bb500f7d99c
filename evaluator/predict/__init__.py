"""Predict every layout from one device's measurements, then measure only the best few.

    records.py   profile.json: the model's shape, one device's steps, the probe, stored runs' rows
    engine.py    the engine part of a profile: decode steps and prefills of a real engine
    probe.py     one device's memory bandwidth, the all-reduce between devices (torch.distributed)
    stored.py    a stored single-device run standing in for the engine part
    model.py     the roofline model of one step, offline batches, serving levels, capacity
    fit.py       its free numbers fitted to one device's measurements
    layouts.py   a layout's prediction and the ranking, with the terms
    choose.py    evaluator.compare --predict / --measure-top; the report's predicted-vs-measured cell
    evidence.py  the model against results/evidence/ (python -m evaluator.predict.evidence)

    python -m evaluator.profile --help; python -m evaluator.compare --predict --help
"""
