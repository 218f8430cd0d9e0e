"""MoAI's relation selection on hand-made PSGTR outputs; expected sentences written out from the rules."""

from __future__ import annotations

import numpy as np

from moai_edge.runtime.experts.relations import number_duplicates, select_relations
from moai_edge.runtime.experts.verbalize import verbalize_relations

CLASSES = ["person", "bicycle", "car", "wall-other-merged"]
PREDICATES = ["over", "in front of", "beside", "riding"]


def dists(rows):
    """Rows of predicate probabilities with the no-relation column first."""
    return np.array([[1 - sum(r)] + r for r in rows], np.float32)


def test_duplicates_are_numbered_in_order():
    assert number_duplicates(["person", "bicycle", "person", "car", "person"]) == [
        "person (#1)", "bicycle", "person (#2)", "car", "person (#3)"]


def test_confident_relations_become_sentences():
    labels = [1, 1, 2, 4]  # entities: person, person, bicycle, wall-other-merged
    rel = dists([[0.0, 0.0, 0.05, 0.9],   # person (#1) riding bicycle: kept
                 [0.0, 0.0, 0.85, 0.1],   # person (#2) beside wall: kept
                 [0.5, 0.2, 0.1, 0.1],    # below 0.8: dropped
                 [0.1, 0.1, 0.1, 0.1]])
    pairs = np.array([[0, 2], [1, 3], [0, 1], [2, 3]])
    out = select_relations(rel, pairs, labels, CLASSES, PREDICATES)
    assert sorted(out) == [("person (#1)", "riding", "bicycle"), ("person (#2)", "beside", "wall")]
    assert verbalize_relations(sorted(out)) == ("The image includes relationships between objects: person (#1) is "
                                                "riding bicycle, and person (#2) is beside wall.")


def test_threshold_and_empty_cases():
    rel = dists([[0.3, 0.3, 0.2, 0.1]])  # best predicate 0.3 < 0.8 (one label, so k = 1)
    assert select_relations(rel, np.array([[0, 0]]), [1], CLASSES, PREDICATES) == []
    rel = dists([[0.0, 0.0, 0.0, 0.8]])  # exactly at the threshold: kept
    assert select_relations(rel, np.array([[0, 0]]), [1], CLASSES, PREDICATES) == [("person", "riding", "person")]
    assert select_relations(np.zeros((0, 5), np.float32), np.zeros((0, 2), int), [], CLASSES, PREDICATES) == []
    assert verbalize_relations([]) == ""


def test_fewer_relations_than_labels_verbalize_nothing():
    """k = min(10, number of labels) exceeds the relations, so the reference's argpartition raises and its
    try/except leaves the sentence empty; we reproduce that rather than guess what was meant."""
    rel = dists([[0.0, 0.0, 0.0, 0.95]])
    assert select_relations(rel, np.array([[0, 1]]), [1, 2], CLASSES, PREDICATES) == []


def test_top_k_counts_labels_not_relations():
    """The reference takes min(10, number of labels): with 12 triplets and 24 labels only 10 can be kept."""
    labels = [1] * 12 + [2] * 12
    rel = dists([[0.0, 0.0, 0.0, 0.81 + i / 1000] for i in range(12)])
    pairs = np.array([[i, 12 + i] for i in range(12)])
    out = select_relations(rel, pairs, labels, CLASSES, PREDICATES)
    assert len(out) == 10
    assert ("person (#1)", "riding", "bicycle (#1)") not in out and ("person (#2)", "riding", "bicycle (#2)") not in out
