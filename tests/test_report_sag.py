"""The sag table's rows (explainers.sag.SagResult.rows -> SAG_SCHEMA Parquet) and the report's "Sufficient part sets"
section built from them: shares of found pedestrians per common minimal sufficient set, by height and occlusion, in
words; the DAG's nodes and edges; no section without sag rows. Pure functions of hand-built tables: no model."""
from __future__ import annotations

import re
from dataclasses import replace

import pandas as pd
import pyarrow.parquet as pq

from detection.datasets.tables import SCHEMAS, rows_to_table, write_table_atomic
from explainers.sag import SagEdge, SagResult
from tasks.report import build_report
from tasks.report_sag import (
    common_sets,
    dag_layout,
    population,
    sag_sentences,
    sag_targets,
    set_label,
    sets_table,
    smallest_table,
)
from tests.report_fixture import PARTS, report_inputs

HEAD, TORSO, CONTEXT = PARTS.index("head"), PARTS.index("torso"), PARTS.index("context")
LEGS = (PARTS.index("left_upper_leg"), PARTS.index("right_upper_leg"))


def graph(roots: list[tuple[int, ...]], edges: list[SagEdge] = (), status: str = "complete") -> SagResult:
    scored = [(tuple(sorted(r)), 0.95) for r in roots]
    return SagResult(2.0, 0.2, 0.9, 0.4, [(r, 2 * s) for r, s in scored], list(range(len(roots))), list(edges),
                     30, 20, status)


# p1 tiny / no occlusion, p2 small / partial, p4 large / none: found; p3 missed (not counted)
GRAPHS = {
    "p1": graph([(HEAD, TORSO), LEGS], [SagEdge((HEAD, TORSO), (TORSO,), HEAD, 1.9, 1.2),
                                        SagEdge((HEAD, TORSO), (HEAD,), TORSO, 1.9, 0.9)]),
    "p2": graph([(HEAD, TORSO)]),
    "p3": graph([(HEAD, TORSO)]),
    "p4": graph([(TORSO, CONTEXT)]),
}
IMAGES = {"p1": "im0", "p2": "im0", "p3": "im1", "p4": "im1"}


def sag_table(tmp_path, graphs: dict[str, SagResult] = GRAPHS):
    rows = [r for t, g in graphs.items() for r in g.rows(PARTS, summary=True, image_id=IMAGES[t], target_id=t,
                                                         kind="persons", job="sag@parts")]
    path = write_table_atomic(rows_to_table(rows, "sag"), tmp_path / "sag" / "shard-00000.parquet")
    return pq.read_table(path, schema=SCHEMAS["sag"])


def test_sag_rows_round_trip_through_the_parquet_schema(tmp_path):
    table = sag_table(tmp_path)
    assert table.schema == SCHEMAS["sag"]
    p1 = [r for r in table.to_pylist() if r["target_id"] == "p1"]
    assert [r["element"] for r in p1] == ["target", "root", "root", "edge", "edge"]
    target, root, _, edge, _ = p1
    assert target["parts"] == PARTS and target["size"] == 11 and target["score"] == 2.0
    assert target["status"] == "complete" and target["n_forward"] == 30 and target["search_forward"] == 20
    assert root["parts"] == ["head", "torso"] and root["diverse"] and abs(root["share"] - 0.95) < 1e-6
    assert edge["parts"] == ["head", "torso"] and edge["child"] == ["torso"] and edge["removed"] == "head"
    assert abs(edge["drop"] - 0.7) < 1e-6 and abs(edge["drop_share"] - 0.35) < 1e-6
    assert abs(edge["child_share"] - 0.6) < 1e-6 and abs(edge["threshold"] - 0.9) < 1e-6
    assert abs(edge["keep"] - 0.4) < 1e-6


def test_shares_of_found_pedestrians_per_common_set_by_height_and_occlusion(tmp_path):
    inp = report_inputs(tmp_path)
    per = sag_targets(sag_table(tmp_path).to_pandas(), inp.targets, "sag@parts")
    pop, who = population(per)
    assert who == "found pedestrians" and sorted(pop["target_id"]) == ["p1", "p2", "p4"]
    sets = common_sets(pop)
    # most pedestrians first, ties by size then label
    assert [set_label(s) for s in sets] == ["head + torso", "left upper leg + right upper leg", "torso + context"]
    table = sets_table(pop, sets).set_index("part set")
    assert table.loc["head + torso", "all (n=3)"] == "67 %"            # p1, p2 of the found p1, p2, p4 (p3 missed)
    assert table.loc["head + torso", "occl. none (n=2)"] == "50 %"     # p1 yes, p4 no
    assert table.loc["head + torso", "occl. partial (n=1)"] == "100 %"
    assert table.loc["torso + context", "h large (n=1)"] == "100 %"
    assert per.set_index("target_id").loc["p1", "smallest"] == 2


def test_the_report_says_it_in_words_and_draws_the_gallery_dags(tmp_path):
    inp = replace(report_inputs(tmp_path), sag=sag_table(tmp_path).to_pandas())
    page, summary = build_report(inp, per_row=2)
    assert '<section id="sag"><h2>Sufficient part sets</h2>' in page and 'href="#sag"' in page
    assert "<b>head + torso</b> alone keeps ≥ 90 % of the score for 67 % of found pedestrians (2 of 3)" in page
    assert "by occlusion: none 50 %, partial 100 %" in page
    assert "**head + torso** alone keeps >= 90 %" in summary or "**head + torso** alone keeps ≥ 90 %" in summary
    section = page.split('<section id="sag">')[1].split("</section>")[0]
    assert len(re.findall(r"<figure><img src=\"data:image/png;base64,", section)) == 2
    # without sag rows there is no section and no link
    page, _ = build_report(report_inputs(tmp_path), per_row=2)
    assert 'id="sag"' not in page and 'href="#sag"' not in page


def test_the_dag_draws_diverse_roots_and_their_deletions(tmp_path):
    rows = sag_table(tmp_path).to_pandas()
    nodes, edges = dag_layout(rows[rows["target_id"] == "p1"])
    assert set(nodes) == {frozenset({"head", "torso"}), frozenset({"left_upper_leg", "right_upper_leg"}),
                          frozenset({"torso"}), frozenset({"head"})}
    assert nodes[frozenset({"head", "torso"})][1] == 2 and nodes[frozenset({"torso"})][1] == 1
    assert sorted((r, round(d, 3)) for _, _, r, d in edges) == [("head", 0.35), ("torso", 0.5)]
    assert dag_layout(rows[rows["element"] == "target"]) == ({}, [])


def test_the_dag_keeps_a_small_diverse_root_below_the_deletion_levels():
    """Roots {head} and {torso, arms, legs} (parts6): the deletions of the large root fill the levels below it, yet
    the one-part root is drawn too (every diverse root is)."""
    names = ["head", "torso", "left_arm", "right_arm", "left_leg", "right_leg", "context"]
    big = (1, 2, 3, 4, 5)
    chain = [big, (1, 2, 3, 4), (1, 2, 3), (1, 2)]
    edges = [SagEdge(p, c, (set(p) - set(c)).pop(), 2.0 - 0.1 * k, 1.9 - 0.1 * k)
             for k, (p, c) in enumerate(zip(chain, chain[1:]))]
    result = SagResult(2.0, 0.2, 0.9, 0.4, [((0,), 1.9), (big, 1.95)], [0, 1], edges, 30, 20, "complete")
    rows = pd.DataFrame(result.rows(names, summary=True, image_id="im0", target_id="p1", kind="persons",
                                    job="sag@parts"))
    nodes, drawn = dag_layout(rows, levels=3)
    assert frozenset({"head"}) in nodes and nodes[frozenset({"head"})][1] == 1
    assert frozenset(names[i] for i in big) in nodes
    assert {frozenset(names[i] for i in c) for c in chain} <= set(nodes)          # the deletions stay drawn
    assert len(drawn) == 3


def test_an_empty_root_is_named_and_counted_as_zero_parts(tmp_path):
    """explainers.sag makes () the one root when the empty set keeps the threshold (p2 here): it reads '(nothing)',
    has its own sentence and its own '0 parts' column in the smallest-set table (not 0 % everywhere)."""
    graphs = {**GRAPHS, "p2": graph([()])}
    inp = report_inputs(tmp_path)
    per = sag_targets(sag_table(tmp_path, graphs).to_pandas(), inp.targets, "sag@parts")
    pop, who = population(per)
    assert set_label(frozenset()) == "(nothing)"
    assert per.set_index("target_id").loc["p2", "smallest"] == 0
    small = smallest_table(pop).set_index("pedestrians")
    assert small.loc["all (n=3)", "0 parts"] == "33 %" and small.loc["all (n=3)", "2 parts"] == "67 %"
    assert small.loc["all (n=3)", "none found"] == "0 %"
    assert "0 parts" not in smallest_table(population(sag_targets(sag_table(tmp_path).to_pandas(), inp.targets,
                                                                  "sag@parts"))[0])
    sets = common_sets(pop)
    assert frozenset() in sets and "(nothing)" in set(sets_table(pop, sets)["part set"])
    text = " ".join(sag_sentences(pop, who, sets, 0.9))
    assert "<b></b>" not in text
    assert "With every part hidden the score stays ≥ 90 % of the full score for 33 % of found pedestrians" in text
    rows = sag_table(tmp_path, graphs).to_pandas()
    nodes, _ = dag_layout(rows[rows["target_id"] == "p2"])
    assert set(nodes) == {frozenset()} and nodes[frozenset()][1] == 0
