"""MoAI's scene-graph selection (`make_sgg_prompt`): which PSGTR triplets become sentences.

Inputs are what OpenPSG's PSGTR head returns after its own post-processing: 1-based object labels
(subjects then objects), the predicate distributions `rel_dists` (column 0 = no relation) and
`rel_pairs` indexing into the labels. The selection keeps the reference's quirks: the top-k count
is min(10, number of *labels*), candidates come from numpy's `argpartition` paired position by
position with `partition`'s values, and any failure means "no relation".
"""

from __future__ import annotations

import numpy as np

from .verbalize import clean_class


def number_duplicates(names: list[str]) -> list[str]:
    """Names that occur more than once become `name (#1)`, `name (#2)`, ... in order of appearance."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        if names.count(name) > 1:
            seen[name] = seen.get(name, 0) + 1
            out.append(f"{name} (#{seen[name]})")
        else:
            out.append(name)
    return out


def select_relations(rel_dists: np.ndarray, rel_pairs: np.ndarray, labels: list[int], class_names: list[str],
                     predicates: list[str], *, num_rel: int = 10, threshold: float = 0.8) -> list[tuple[str, str, str]]:
    """(subject, predicate, object) strings, in the reference's order."""
    names = number_duplicates([clean_class(class_names[label - 1]) for label in labels])
    if len(rel_dists) == 0 or len(names) == 0:
        return []  # the reference's try/except path
    k = min(num_rel, len(names))
    dists = np.asarray(rel_dists)[:, 1:]
    scores = dists.max(1)
    if k > len(scores):
        return []  # argpartition would raise in the reference, which then verbalizes nothing
    top = np.argpartition(scores, -k)[-k:]
    values = np.partition(scores, -k)[-k:]
    chosen = top[np.where(values >= threshold)]
    predicate_ids = dists[chosen].argmax(1)
    return [(names[s], predicates[p], names[o]) for (s, o), p in zip(np.asarray(rel_pairs)[chosen], predicate_ids)]
