"""Token-level pictures: tokens drawn where they are, padding not drawn, HTML self-contained."""

import html
import re

import pytest
from matplotlib.patches import FancyBboxPatch

from icl_mech import Demonstration, PromptBatch, Task, tasks
from icl_mech.evaluation import build_prompts
from icl_mech.show import ROLE_COLOURS, prompt_figure, prompt_html
from icl_mech.show.tokens import TARGET_EDGE


@pytest.fixture
def padded(tiny):
    """Prompts of different lengths (left padding) whose label words span several tokens."""
    sentiment = tasks.load("sentiment")
    words = {"positive": "glorptastic", "negative": "snorfulent"}  # split into several tokens
    examples = [Demonstration(e.x, words[e.y]) for e in sentiment.examples]
    task = Task("made-up labels", tuple(examples), sentiment.template, tuple(words.values()))
    pool, test = task.split(3, seed=0)
    batch = PromptBatch.from_prompts(tiny, build_prompts(pool, 1, test.examples, seed=0))
    assert (batch.attention_mask == 0).any()
    assert any(len(tokens) > 1 for row in batch.rows for tokens in row.labels)
    return batch


def real_positions(batch, row):
    return [p for p in range(batch.seq_len) if int(batch.attention_mask[row, p])]


def test_pieces_are_the_prompt_text_where_the_tokens_sit(padded):
    for row, prompt in enumerate(padded.prompts):
        pieces = [padded.pieces[row][p] for p in real_positions(padded, row)]
        pieces = [p for p in pieces if p != "<bos>"]
        assert "".join(pieces) == prompt.text
        labels = [
            "".join(padded.pieces[row][p] for p in tokens) for tokens in padded.rows[row].labels
        ]
        assert [label.strip() for label in labels] == [
            s.text.strip() for s in prompt.segments if s.role == "label"
        ]


def test_html_draws_every_real_token_once_and_no_padding(padded):
    page = prompt_html(padded, rows=range(len(padded)))
    assert not re.search(r"(src|href)\s*=\s*[\"']?https?:", page) and "<script" not in page
    blocks = page.split("<b style")[1:]
    for row, block in enumerate(blocks):
        positions = [int(p) for p in re.findall(r'title="position (\d+):', block)]
        assert positions == real_positions(padded, row)
        assert block.count(f"outline:2px solid {TARGET_EDGE}") == 1
        label_spans = re.findall(r"position \d+: label ", block)
        assert len(label_spans) == sum(len(t) for t in padded.rows[row].labels)


def test_figure_has_one_box_per_real_token_and_one_outlined_target(padded):
    for row in range(len(padded)):
        figure = prompt_figure(padded, row)
        boxes = [p for p in figure.axes[0].patches if isinstance(p, FancyBboxPatch)]
        assert len(boxes) == len(real_positions(padded, row))
        outlined = [b for b in boxes if b.get_edgecolor()[3] > 0]
        assert len(outlined) == 1
        colours = {tuple(round(c, 3) for c in b.get_facecolor()[:3]) for b in boxes}
        assert len(colours) >= 4  # template, input, label, query at least
    assert set(ROLE_COLOURS) >= {"input", "template", "label", "query"}


def test_repr_is_one_line_and_html_shows_the_batch(padded):
    assert "\n" not in repr(padded) and "made-up labels" in repr(padded)
    assert html.escape(repr(padded)) in padded._repr_html_()


@pytest.mark.embedded
def test_pictures_of_an_embedded_batch(embedded):
    task = tasks.load("topic")
    pool, test = task.split(2, seed=0)
    batch = PromptBatch.from_prompts(embedded, build_prompts(pool, 1, test.examples, seed=0))
    for row, prompt in enumerate(batch.prompts):
        pieces = [batch.pieces[row][p] for p in real_positions(batch, row)]
        assert "".join(pieces) == prompt.text
        boxes = [p for p in prompt_figure(batch, row).axes[0].patches]
        assert len(boxes) == len(pieces)
    rows = prompt_html(batch, rows=[0, 1]).split("<b style")[1:]
    assert [block.count(f"outline:2px solid {TARGET_EDGE}") for block in rows] == [1, 1]


def test_saliency_edges_are_the_strongest_scores_over_the_layers(padded, tiny):
    from icl_mech.anchors import saliency
    from icl_mech.show.saliency import edges, saliency_figure, saliency_html

    result = saliency(tiny, padded)
    for row in range(len(padded)):
        labels = [p for tokens in padded.rows[row].labels for p in tokens]
        into_labels, into_target = edges(result, padded, row, layers=[0, 1], top=5)
        summed = result.scores[row, [result.layers.index(0), result.layers.index(1)]].sum(0)
        candidates = sorted(
            (float(summed[p, j]) for p in labels for j in range(p)
             if padded.attention_mask[row, j] and j not in labels),
            reverse=True,
        )  # fmt: skip
        strongest = max(
            candidates[0], max(float(summed[padded.rows[row].target, p]) for p in labels)
        )
        assert [w * strongest for *_, w in into_labels] == pytest.approx(candidates[:5], rel=1e-5)
        assert all(j < i and j not in labels for i, j, _ in into_labels)
        assert {j for _, j, _ in into_target} <= set(labels)
        figure = saliency_figure(result, padded, row, layers=[0, 1], top=5)
        assert len(figure.axes[0].patches) == len(into_labels) + len(into_target)
        page = saliency_html(result, padded, row)
        assert "http" not in page and page.count("<b style") == 2
