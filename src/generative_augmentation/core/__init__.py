"""The machine-learning core: image I/O, classifiers, generators, features and metrics.

Nothing in this package imports Kedro; every module is usable and testable on its own.
"""
