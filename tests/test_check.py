"""The report card: the committed full runs' verdicts, and ``icl-mech check`` on the embedded
model agreeing with them (the rules themselves: ``test_verdicts.py``)."""

import json
import re
from pathlib import Path

import pytest
from browser import distinct_colours, pixels, require_chromium, screenshot

from icl_mech import verdicts
from icl_mech.check import CheckSettings, check
from icl_mech.cli import main

FIGURES = Path(__file__).resolve().parents[1] / "figures"
# what the committed full runs show on the embedded model (README, "Report card")
EXPECTED = {
    ("ICL", verdicts.ICL_QUESTION): "yes",
    ("label words: flows", verdicts.FLOWS_QUESTION): "yes",
    ("label words: isolation", "Does shallow label isolation hurt more than deep?"): "yes",
    ("task vectors", "Does the best-layer task vector beat 0-shot on city attribute tasks?"): "yes",
    ("task vectors", "Does the best-layer task vector beat 0-shot on input→output tasks?"): "weak",
    # λ chosen on 16 dev sources; on test the style moves but BLEU's lower bound is below 30
    ("ICV", "Does the ICV move the style score while keeping the content?"): "weak",
}


def _answers(found) -> dict:
    return {(v.method, v.question): v.answer for v in found}


def test_committed_full_runs_give_the_readme_verdicts():
    found = _answers(verdicts.from_reports(FIGURES))
    assert found == EXPECTED


@pytest.fixture(scope="module")
def card(embedded):
    """The quick card (about a minute): the default card takes five and is what the README
    shows; at the quick sizes only the large effects are established."""
    return check(embedded, CheckSettings.quick(threads=None), progress=False)


def test_quick_check_on_the_embedded_model_agrees_with_the_full_runs(card):
    """Small samples may leave an answer open ("not enough evidence", weak for yes, no for
    weak), never contradict the full runs (yes against no)."""
    found = _answers(card.verdicts)
    assert found.keys() == EXPECTED.keys()
    assert found[("ICL", verdicts.ICL_QUESTION)] == "yes"  # large enough at the quick sizes
    for key, answer in found.items():
        assert {answer, EXPECTED[key]} != {"yes", "no"}, key
    for v in card.verdicts:  # every number compared carries an interval
        assert re.search(r"\[-?\d\.\d\d?, -?\d\.\d\d?\]", v.evidence), v.evidence


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
