"""Reading an attribution: where a concept's components sit, how concentrated, shared, stable and timed they are.

Plain functions over `AttributionScores` (or dicts name -> tensor) and a Backbone's grouping; no Hydra. The
experiment `experiment=analysis` (experiments/analysis.py) drives them and `python -m cad.inspect` reads one
scores folder with them.

- where.py: positive / negative mass and top-x% shares per group of the denoiser (Backbone.group_names).
- concentration.py: Lorenz-style curves, their Gini-style number, and the causal ablation curve (H1 / H2).
- overlap.py: Jaccard of top-x% sets, Spearman's rank correlation, generic against unique components.
- stability.py: estimates against a reference estimate, the K at which the ranking settles.
- timing.py: timestep buckets (cad.attribute(..., time_buckets=B)) per group and their overlaps.
- plots.py: the figures (PNG bytes).
"""

from cad.analysis.concentration import ablation_curve, gini, lorenz
from cad.analysis.flat import flatten, random_set, top_set, unflatten
from cad.analysis.overlap import chance_jaccard, generic_unique, jaccard, overlap_matrix, spearman
from cad.analysis.stability import settle_k, stability_table
from cad.analysis.timing import bucket_overlap, bucket_profile
from cad.analysis.where import group_mass

__all__ = ["ablation_curve", "bucket_overlap", "bucket_profile", "chance_jaccard", "flatten", "generic_unique",
           "gini", "group_mass", "jaccard", "lorenz", "overlap_matrix", "random_set", "settle_k", "spearman",
           "stability_table", "top_set", "unflatten"]
