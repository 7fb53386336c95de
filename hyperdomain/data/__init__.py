"""Data for training loops: ``DomainViews``, pairs of views made on the fly by a generator.

(This folder also holds the shipped domain lists, ``domains_*.txt``.)
"""
from ..datasets.views import DomainViews, PairPlan

__all__ = ["DomainViews", "PairPlan"]
