"""A notebook card as a real browser draws it: headless Chromium renders the ``_repr_html_`` of
Flows computed on a tiny model. The picture is not blank, the inline figure is decoded and
drawn (its line colours appear, and the browser may fetch nothing), and the text the browser
shows holds the card's numbers. Skipped without Chromium, except under CI (``CI=true``)."""

import browser
import pytest
from browser import colour_area, distinct_colours, pixels, require_chromium, screenshot

from icl_mech import PromptBatch
from icl_mech.anchors import flows, saliency
from icl_mech.anchors.experiment import task_prompts
from icl_mech.show import cards
from icl_mech.tasks import load

FLOW_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c")  # matplotlib's C0-C2: S_wp, S_pq, S_ww


def test_flows_card_in_a_real_browser(tiny_gpt2, tmp_path):
    require_chromium()
    batch = PromptBatch.from_prompts(tiny_gpt2, task_prompts(load("sentiment"), 6, 0))
    result = flows(saliency(tiny_gpt2, batch), batch)
    page = tmp_path / "flows.html"
    page.write_text(cards.page(result._repr_html_(), "flows"), encoding="utf-8")

    text = screenshot(page, tmp_path / "flows.png")

    rgb = pixels(tmp_path / "flows.png")
    assert rgb.std() > 10 and distinct_colours(tmp_path / "flows.png") > 50
    for colour in FLOW_COLOURS:  # drawn only by the decoded inline PNG
        assert colour_area(tmp_path / "flows.png", colour) > 20, colour
    summary = result.summary()
    assert "Flows: share of saliency per layer" in text and "sentiment" in text
    assert f"n (queries) {summary['n'][0]}" in text
    for row in summary.itertuples():
        shown = f"{row.normalised:.2f} [{row.normalised_low:.2f}, {row.normalised_high:.2f}]"
        assert shown in text, (row.layer, row.flow)


@pytest.mark.parametrize("ci", ["true", "1", "", "false"])
def test_a_missing_browser_skips_outside_ci_and_fails_under_ci(monkeypatch, ci):
    monkeypatch.setattr(browser, "find_chromium", lambda: None)
    monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if ci in ("true", "1") else pytest.skip.Exception
    with pytest.raises(expected, match="apt-get install chromium"):
        require_chromium()
