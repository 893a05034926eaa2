"""The report card: verdict rules, the committed full runs' verdicts, and ``icl-mech check`` on
the embedded model agreeing with them."""

import json
import re
from pathlib import Path

import pytest
from browser import distinct_colours, pixels, require_chromium, screenshot

from icl_mech import IclMechError, verdicts
from icl_mech.check import CheckSettings, check
from icl_mech.cli import main

FIGURES = Path(__file__).resolve().parents[1] / "figures"
# what the committed full runs show on the embedded model (README, "Report card")
EXPECTED = {
    ("ICL", "Does in-context learning work (k-shot beats 0-shot)?"): "yes",
    ("label words: flows", "Do S_wp and S_pq cross?"): "yes",
    ("label words: isolation", "Does shallow label isolation hurt more than deep?"): "yes",
    ("task vectors", "Does the best-layer task vector beat 0-shot on city attribute tasks?"): "yes",
    ("task vectors", "Does the best-layer task vector beat 0-shot on input→output tasks?"): "weak",
    ("ICV", "Does the ICV move the style score while keeping the content?"): "yes",
}


def _answers(found) -> dict:
    return {(v.method, v.question): v.answer for v in found}


def _pair(value, low, high) -> dict:
    return {"value": value, "value_ci": [low, high]}


def _tv(tv, low, high, icl, baseline=0.1) -> dict:
    return {
        "tv_replace": tv,
        "tv_replace_ci": [tv - 0.05, tv + 0.05],
        "tv_replace - baseline": tv - baseline,
        "tv_replace - baseline_ci": [low, high],
        "tv_replace_over_icl": tv / icl,
        "icl": icl,
        "icl_ci": [icl - 0.05, icl + 0.05],
        "baseline": baseline,
        "baseline_ci": [baseline - 0.05, baseline + 0.05],
    }


def test_task_vector_rule_needs_the_interval_above_zero_and_half_of_icl():
    cases = {  # (tv, diff low, diff high, icl) -> answer
        (0.5, 0.2, 0.6, 0.8): "yes",
        (0.2, 0.02, 0.2, 0.8): "weak",  # beats 0-shot, but 25% of ICL
        (0.5, -0.1, 0.6, 0.8): "no",  # interval includes zero
    }
    for (tv, low, high, icl), answer in cases.items():
        headlines = {"task-vectors": {"city_tasks_mean": _tv(tv, low, high, icl)}}
        found = verdicts.task_vector_works(headlines, "city")
        assert found.answer == answer, (tv, low, high, icl, found.evidence)
        assert ("does not work" in found.evidence) == (answer != "yes")


def test_isolation_rule_reads_the_paired_interval():
    def headlines(low, high):
        loyalty = {
            k: {"label": 0.5, "label_ci": [0.4, 0.6]} for k in ("shallow_label", "deep_label")
        }
        effect = {"label_loyalty_shallow_minus_deep": _pair((low + high) / 2, low, high)}
        return {"anchors": {"sentiment": {"loyalty": loyalty, "isolation_effect": effect}}}

    assert verdicts.shallow_isolation_hurts_more(headlines(-0.3, -0.1), "sentiment").answer == "yes"
    straddling = verdicts.shallow_isolation_hurts_more(headlines(-0.3, 0.05), "sentiment")
    assert straddling.answer == "no" and "includes zero" in straddling.evidence
    assert verdicts.shallow_isolation_hurts_more(headlines(0.1, 0.3), "sentiment").answer == "no"


def test_icv_rule_counts_only_strengths_that_keep_the_content():
    def headlines(gain_low, bleu):
        prefix = "negative_positive/icv@0.06/"
        return {"icv": {prefix + "style_gain": 0.3, prefix + "style_gain_ci": [gain_low, 0.5],
                        prefix + "bleu_source": bleu}}  # fmt: skip

    assert verdicts.icv_steers(headlines(0.1, 40.0), "negative_positive").answer == "yes"
    assert verdicts.icv_steers(headlines(0.1, 5.0), "negative_positive").answer == "weak"
    assert verdicts.icv_steers(headlines(-0.1, 40.0), "negative_positive").answer == "no"
    with pytest.raises(IclMechError, match="rude_polite"):
        verdicts.icv_steers(headlines(0.1, 40.0), "rude_polite")


def test_flows_rule_needs_s_wp_before_s_pq():
    def headlines(start, shallow):
        h = {"S_pq_dominant_from": start, "S_wp_dominant_layers": shallow, "n": 4}
        return {"anchors": {"topic": h}}

    assert verdicts.flows_cross(headlines(14, "0-13"), "topic").answer == "yes"
    assert verdicts.flows_cross(headlines(None, "0-29"), "topic").answer == "no"
    assert verdicts.flows_cross(headlines(0, "none"), "topic").answer == "no"


def test_committed_full_runs_give_the_readme_verdicts():
    found = _answers(verdicts.from_reports(FIGURES))
    assert found == EXPECTED


@pytest.fixture(scope="module")
def card(embedded):
    """The quick card (about a minute): the default card takes five and is what the README
    shows; at the quick sizes only the large effects are established."""
    return check(embedded, CheckSettings.quick(threads=None), progress=False)


# the effects large enough to show at the quick sizes
STRONG = [k for k in EXPECTED if k[0] in ("ICL", "label words: flows") or "city" in k[1]]


def test_quick_check_on_the_embedded_model_agrees_with_the_full_runs(card):
    found = _answers(card.verdicts)
    assert found.keys() == EXPECTED.keys()
    for key in STRONG:
        assert found[key] == EXPECTED[key], key
    for v in card.verdicts:  # every number compared carries an interval; layer ranges their n
        if v.method == "label words: flows":
            assert re.search(r"from \d+ on \(n=\d+ prompts\)", v.evidence), v.evidence
        else:
            assert re.search(r"\[-?\d\.\d\d, -?\d\.\d\d\]", v.evidence), v.evidence


def test_report_files_are_self_contained(card, tmp_path):
    json_path, html_path = card.write(tmp_path)
    record = json.loads(json_path.read_text())
    assert [v["answer"] for v in record["verdicts"]] == [v.answer for v in card.verdicts]
    page = html_path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*https?:""", page)
    assert page.count("data:image/png;base64,") == len(card.figures)
    for v in card.verdicts:
        assert v.question in page.replace("&#x27;", "'")


def test_cli_check_rejects_bad_settings_before_loading(capsys):
    assert main(["check", "--set", "icl_tasks=nope"]) == 2
    assert "icl_tasks" in capsys.readouterr().err
    assert main(["check", "--set", "tv_n_test=0"]) == 2


def test_report_card_in_a_real_browser(card, tmp_path):
    require_chromium()
    _, html_path = card.write(tmp_path)
    text = screenshot(html_path, tmp_path / "report.png", height=2400)
    assert pixels(tmp_path / "report.png").std() > 10
    assert distinct_colours(tmp_path / "report.png") > 50  # the inline figures are drawn
    assert f"icl_mech report card: {card.model}" in text
    for v in card.verdicts:
        assert v.question in text and v.answer.upper() in text
