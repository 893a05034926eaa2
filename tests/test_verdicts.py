"""The verdict rules on crafted headlines with known intervals: each verdict reaches yes, weak,
no and "not enough evidence"; the card's task sets and the ICV dev/test split."""

import pandas as pd
import pytest

from icl_mech import IclMechError, tasks, verdicts
from icl_mech.check import CheckSettings
from icl_mech.icv.evaluate import split_pairs
from icl_mech.icv.results import choose_strength
from icl_mech.show.report_card import verdict_table
from icl_mech.verdicts import NOT_ENOUGH

ALL_ANSWERS = {"yes", "weak", "no", NOT_ENOUGH}


def _icl(low, high) -> dict:
    mean = {"icl": 0.6, "icl_ci": [0.5, 0.7], "baseline": 0.3, "baseline_ci": [0.2, 0.4],
            "icl - baseline": (low + high) / 2, "icl - baseline_ci": [low, high]}  # fmt: skip
    return {"task-vectors": {"mean": mean, "n_tasks": 4, "n_test_per_task": 20}}


def test_icl_rule_reads_the_gain_interval():
    cases = {(0.2, 0.4): "yes", (0.02, 0.08): "weak", (-0.05, 0.05): "no", (0.0, 0.67): NOT_ENOUGH}
    found = {k: verdicts.icl_works(_icl(*k)) for k in cases}
    assert {k: v.answer for k, v in found.items()} == cases
    assert {v.question for v in found.values()} == {verdicts.ICL_QUESTION}
    assert "not enough evidence" in found[0.0, 0.67].evidence


def test_icl_verdict_asks_one_question_on_the_card_and_the_full_runs():
    card = {"icl": {"all": {}}, **_icl(0.2, 0.4)}  # the card's classification section is shown,
    assert [v.method for v in verdicts.judge(card)] == ["ICL"]  # the io tasks judged
    assert verdicts.judge({"icl": {"all": {}}}) == []


def _flows(leads, cis, start=5) -> dict:
    h = {"flow_layers": list(range(len(leads))), "S_wp_lead": leads, "S_wp_lead_ci": cis,
         "S_pq_dominant_from": start, "n": 32}  # fmt: skip
    return {"anchors": {"sentiment": h}}


def _crossing(shallow=(0.5, 0.4, 0.6), deep=(-0.5, -0.6, -0.4), at=0) -> dict:
    """Nine layers (thirds of three): S_wp leads 0-4, S_pq 5-8; layer ``at`` changed."""
    rows = [(0.5, 0.4, 0.6)] * 5 + [(-0.5, -0.6, -0.4)] * 4
    if at < 3:
        rows[at] = shallow
    else:
        rows[at] = deep
    return _flows([r[0] for r in rows], [[r[1], r[2]] for r in rows])


def test_flows_rule_reads_per_layer_intervals_in_both_thirds():
    cases = {
        "yes": _crossing(),
        "weak": _crossing(shallow=(0.05, 0.02, 0.08)),  # S_wp ahead in layer 0, by too little
        "no": _crossing(deep=(0.3, 0.2, 0.4), at=7),  # S_wp ahead in a deep layer
        NOT_ENOUGH: _crossing(shallow=(0.1, -0.1, 0.3)),
    }
    for expected, headlines in cases.items():
        found = verdicts.flows_cross(headlines, "sentiment")
        assert found.answer == expected, found.evidence
        assert found.numbers["layers"] == [[0, 1, 2], [6, 7, 8]]


def test_flows_rule_refuses_a_crossing_only_in_the_deep_layers():
    rows = [(0.5, 0.4, 0.6)] * 7 + [(-0.5, -0.6, -0.4)] * 2  # S_pq leads only layers 7-8
    headlines = _flows([r[0] for r in rows], [[r[1], r[2]] for r in rows], start=7)
    found = verdicts.flows_cross(headlines, "sentiment")
    assert found.answer == "no", found.evidence
    old = {"anchors": {"sentiment": {"S_pq_dominant_from": 7, "S_wp_dominant_layers": "0-6"}}}
    assert verdicts.flows_cross(old, "sentiment").answer == NOT_ENOUGH  # no intervals: no yes


def test_flow_leads_from_a_flows_table():
    shares = enumerate([(0.7, 0.1), (0.1, 0.8)])
    rows = [("t", layer, flow, v, v - 0.05, v + 0.05)
            for layer, (wp, pq) in shares for flow, v in (("S_wp", wp), ("S_pq", pq))]  # fmt: skip
    table = pd.DataFrame(rows, columns=["task", "layer", "flow", "normalised", "normalised_low",
                                        "normalised_high"])  # fmt: skip
    leads = verdicts.flow_leads(table, "t")
    assert leads["flow_layers"] == [0, 1] and leads["S_wp_lead"] == [0.6, -0.7]
    assert leads["S_wp_lead_ci"] == [[0.5, 0.7], [-0.8, -0.6]]  # unpaired: widths add


def _isolation(low, high) -> dict:
    loyalty = {k: {"label": 0.5, "label_ci": [0.4, 0.6]} for k in ("shallow_label", "deep_label")}
    effect = {"label_loyalty_shallow_minus_deep": {"value": (low + high) / 2,
                                                   "value_ci": [low, high]}}  # fmt: skip
    return {"anchors": {"sentiment": {"loyalty": loyalty, "isolation_effect": effect}}}


def test_isolation_rule_reads_the_paired_interval():
    cases = {(-0.3, -0.1): "yes", (-0.04, -0.01): "weak", (-0.03, 0.02): "no",
             (0.1, 0.3): "no", (-0.3, 0.05): NOT_ENOUGH}  # fmt: skip
    for (low, high), expected in cases.items():
        found = verdicts.shallow_isolation_hurts_more(_isolation(low, high), "sentiment")
        assert found.answer == expected, (low, high, found.evidence)


def _tv(tv, low, high, icl, baseline=0.1, half=0.05) -> dict:
    mean = {"tv_replace": tv, "tv_replace_ci": [tv - half, tv + half],
            "tv_replace - baseline": tv - baseline, "tv_replace - baseline_ci": [low, high],
            "tv_replace_over_icl": tv / icl, "icl": icl, "icl_ci": [icl - half, icl + half],
            "baseline": baseline, "baseline_ci": [baseline - half, baseline + half]}  # fmt: skip
    return {"task-vectors": {"city_tasks_mean": mean}}


def test_task_vector_rule_needs_the_interval_above_zero_and_half_of_icl():
    cases = {  # (tv, diff low, diff high, icl) -> answer
        (0.5, 0.2, 0.6, 0.8): "yes",  # TV/ICL at least 0.45 / 0.85 = 53%
        (0.2, 0.02, 0.2, 0.8): "weak",  # beats 0-shot, but 25% of ICL
        (0.1, -0.1, 0.05, 0.8): "no",  # at most 0.15 / 0.75 = 20% of ICL
        (0.4, 0.0, 0.67, 0.6): NOT_ENOUGH,  # the quick card's six queries
    }
    for (tv, low, high, icl), expected in cases.items():
        found = verdicts.task_vector_works(_tv(tv, low, high, icl), "city")
        assert found.answer == expected, (tv, low, high, icl, found.evidence)
        assert ("does not work" in found.evidence) == (expected == "no")


def _icv(gain, bleu, chosen=0.06) -> dict:
    out = {"negative_positive/n_dev": 12, "negative_positive/n_test": 12}
    if chosen is not None:
        out["negative_positive/chosen_strength"] = chosen
    for lam in (0.04, 0.06):
        key = f"negative_positive/icv@{lam:g}/"
        out |= {key + "style_gain": sum(gain) / 2, key + "style_gain_ci": list(gain),
                key + "bleu_source": bleu[0], key + "bleu_source_ci": list(bleu[1:])}  # fmt: skip
    return {"icv": out}


def test_icv_rule_confirms_the_dev_lambda_on_test_intervals():
    cases = {
        "yes": ((0.1, 0.5), (45.0, 35.0, 55.0)),
        "weak": ((0.1, 0.5), (20.0, 12.0, 28.0)),  # style moves, the content goes
        "no": ((-0.3, -0.1), (45.0, 35.0, 55.0)),
        NOT_ENOUGH: ((-0.1, 0.3), (40.0, 25.0, 55.0)),
    }
    for expected, (gain, bleu) in cases.items():
        found = verdicts.icv_steers(_icv(gain, bleu), "negative_positive")
        assert found.answer == expected, found.evidence
        assert "λ=0.06 chosen on 12 dev sources" in found.evidence
    assert verdicts.icv_steers(_icv((-0.2, 0.1), (10, 5, 20)), "negative_positive").answer == "no"
    no_dev = verdicts.icv_steers(_icv((0.1, 0.5), (45, 35, 55), None), "negative_positive")
    assert no_dev.answer == NOT_ENOUGH and "no dev split" in no_dev.evidence
    with pytest.raises(IclMechError, match="rude_polite"):
        verdicts.icv_steers(_icv((0.1, 0.5), (45, 35, 55)), "rude_polite")


def test_icv_rule_does_not_say_yes_when_only_the_point_clears_the_floor():
    found = verdicts.icv_steers(_icv((0.1, 0.5), (33.4, 22.0, 46.6)), "negative_positive")
    assert found.answer != "yes" and "lower bound is below the floor" in found.evidence
    assert found.answer == "weak"  # the style does move; keeping the content is not shown


def test_each_verdict_reaches_every_answer():
    reached = {
        "ICL": {verdicts.icl_works(_icl(*k)).answer
                for k in ((0.2, 0.4), (0.02, 0.08), (-0.05, 0.05), (0, 0.67))},
        "isolation": {verdicts.shallow_isolation_hurts_more(_isolation(*k), "sentiment").answer
                      for k in ((-0.3, -0.1), (-0.04, -0.01), (0.1, 0.3), (-0.3, 0.05))},
        "flows": {verdicts.flows_cross(h, "sentiment").answer for h in (
            _crossing(), _crossing((0.05, 0.02, 0.08)), _crossing((-0.3, -0.4, -0.2)),
            _crossing((0.1, -0.1, 0.3)))},
        "task vectors": {verdicts.task_vector_works(_tv(*k), "city").answer for k in (
            (0.5, 0.2, 0.6, 0.8), (0.2, 0.02, 0.2, 0.8), (0.1, -0.1, 0.05, 0.8),
            (0.4, 0, 0.67, 0.6))},
        "ICV": {verdicts.icv_steers(_icv(*k), "negative_positive").answer for k in (
            ((0.1, 0.5), (45, 35, 55)), ((0.1, 0.5), (20, 12, 28)), ((-0.3, -0.1), (45, 35, 55)),
            ((-0.1, 0.3), (40, 25, 55)))},
    }  # fmt: skip
    assert reached == dict.fromkeys(reached, ALL_ANSWERS)


def test_the_new_answer_is_accepted_and_shown():
    v = verdicts.Verdict("ICL", "q?", NOT_ENOUGH, "evidence [0.00, 0.67]")
    with pytest.raises(IclMechError, match="answer"):
        verdicts.Verdict("ICL", "q?", "maybe", "")
    text = verdicts.table([v, verdicts.Verdict("ICV", "q?", "yes", "e")])
    assert "NOT ENOUGH EVIDENCE evidence" in text
    assert text.splitlines()[1].index("e") == text.splitlines()[0].index("evidence")
    html = verdict_table([v])
    assert "NOT ENOUGH EVIDENCE" in html and "#57606a" in html


def test_card_task_sets_are_fixed_in_code():
    assert CheckSettings().city_tasks == tuple(tasks.names("city"))
    assert len(CheckSettings().city_tasks) == 6


@pytest.mark.parametrize("pair_set", ["negative_positive", "rude_polite"])
def test_icv_dev_and_test_sources_are_disjoint_and_the_test_draw_stays(pair_set):
    pairs = tasks.load_pairs(pair_set)
    demos, dev, test = split_pairs(pairs, 16, 16, 0, n_dev=16)
    assert len(dev) == 16 and not ({x for x, _ in dev} & {x for x, _ in demos + test})
    assert split_pairs(pairs, 16, 16, 0)[2] == test  # the test draw ignores n_dev
    with pytest.raises(IclMechError, match="dev"):
        split_pairs(pairs, 16, 16, 0, n_dev=50)


def test_lambda_is_chosen_on_the_dev_summary():
    dev = pd.DataFrame({
        "condition": ["none", "icv", "icv", "icv"], "strength": [0.0, 0.02, 0.06, 0.1],
        "style_gain": [float("nan"), 0.05, 0.3, 0.8],
        "style_gain_low": [float("nan"), -0.1, 0.1, 0.6],
        "style_gain_high": [float("nan"), 0.2, 0.5, 1.0],
        "bleu_source": [60.0, 55.0, 45.0, 5.0], "bleu_source_low": [40.0, 40.0, 35.0, 2.0],
        "bleu_source_high": [80.0, 70.0, 55.0, 8.0],
    })  # fmt: skip
    assert choose_strength(dev) == 0.06  # 0.02 barely moves the style, 0.1 loses the content
