"""The remaining token-level pictures: isolation's cut edges, intervention sites read from the
registry (one forward and generation under the key/value cache), the task-vector heatmap and
the logit lens. Batches are left-padded and their label words span several tokens."""

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch

from icl_mech import (
    AddVector,
    Capture,
    Demonstration,
    IclMechError,
    Intervention,
    Patch,
    PromptBatch,
    Task,
    attach,
    run,
    tasks,
)
from icl_mech.anchors.isolation import IsolateLabelWords, IsolateRandomWords, random_word_mask
from icl_mech.backends import is_bridge
from icl_mech.evaluation import build_prompts
from icl_mech.icv import ICVSteering, extract_icv
from icl_mech.runner import reproduce
from icl_mech.show import (
    accuracy_heatmap,
    accuracy_heatmap_html,
    accuracy_matrix,
    cut_edges,
    isolation_figure,
    isolation_html,
    logit_lens,
    record_generation_sites,
    record_sites,
)
from icl_mech.show.sites import CHANGED_BACKGROUND
from icl_mech.show.tokens import _visible
from icl_mech.task_vectors import TaskVector
from icl_mech.task_vectors.lens import theta_lens
from icl_mech.threads import torch_threads

CURVES = Path(__file__).parent.parent / "figures" / "task_vectors_curves.csv"
PROMPTS = ["The food was", "Our hotel room was small, the staff", "A film that"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(
    scope="module",
    params=["tiny_gpt2", "tiny_llama", pytest.param("embedded", marks=pytest.mark.embedded)],
)
def model(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def batch(model):
    """Three prompts of different lengths (left padding), label words of several tokens."""
    sentiment = tasks.load("sentiment")
    words = {"positive": "glorptastic", "negative": "snorfulent"}
    examples = [Demonstration(e.x, words[e.y]) for e in sentiment.examples]
    task = Task("made-up labels", tuple(examples), sentiment.template, tuple(words.values()))
    pool, test = task.split(3, seed=0)
    out = PromptBatch.from_prompts(model, build_prompts(pool, 1, test.examples, seed=0))
    assert (out.attention_mask == 0).any()
    assert all(len(tokens) > 1 for row in out.rows for tokens in row.labels)
    return out


@pytest.fixture(scope="module")
def icv(model):
    return extract_icv(model, tasks.load_pairs("negative_positive")[:4])


def real(batch, row):
    return torch.nonzero(batch.attention_mask[row]).flatten().tolist()


def self_contained(page: str) -> None:
    assert not re.search(r"(src|href)\s*=\s*[\"']?[^\"'>\s]*http", page)
    assert "<script" not in page and "url(" not in page and "@import" not in page


def html_lines(page: str) -> list[list[int]]:
    """Per drawn line of tokens, the positions of its spans."""
    return [
        [int(p) for p in re.findall(r'title="position (\d+):', line)]
        for line in page.split("<b style")[1:]
    ]


def tick_texts(ax) -> list[str]:
    return [tick.get_text() for tick in ax.get_xticklabels()]


# isolation


def test_isolation_cuts_each_label_token_from_every_earlier_token(model, batch):
    layers = [0, model.cfg.n_layers - 1]
    edges = cut_edges(model, batch, IsolateLabelWords(layers))
    earlier = torch.ones(batch.seq_len, batch.seq_len, dtype=torch.bool).tril(-1)
    expected = batch.label_mask()[:, :, None] & earlier
    assert edges.layers == layers
    assert all(torch.equal(edges.cut[i], expected) for i in range(len(layers)))
    for row in range(len(batch)):
        labels = [p for tokens in batch.rows[row].labels for p in tokens]
        figure = isolation_figure(model, batch, IsolateLabelWords(layers), row)
        (ax,) = figure.axes  # both layers cut the same edges: one panel
        grid = ax.images[0].get_array()
        assert grid.tolist() == expected[row][labels][:, real(batch, row)].float().tolist()
        assert tick_texts(ax) == [_visible(batch.pieces[row][p]) for p in real(batch, row)]
        assert [int(t.get_text().split()[0]) for t in ax.get_yticklabels()] == labels
        page = isolation_html(model, batch, IsolateLabelWords(layers), row)
        self_contained(page)
        assert html_lines(page) == [real(batch, row)] * (1 + len(labels))
        assert page.count("outline:2px solid") == len(labels)  # each line's isolated word


def test_isolation_edges_are_the_ones_the_forward_loses(model, batch):
    isolation = IsolateRandomWords([1], seed=3)
    edges = cut_edges(model, batch, isolation)
    assert torch.equal(edges.isolated, random_word_mask(batch, seed=3))
    point = "blocks.1.attn.hook_attn_scores"
    plain, isolated = Capture(point), Capture(point)
    with torch.no_grad():
        run(model, batch, plain)
        run(model, batch, isolation, isolated)
    lost = (isolated.activations[point].isneginf() & ~plain.activations[point].isneginf()).any(1)
    real_keys = batch.attention_mask.bool()[:, None, :]
    assert torch.equal(lost, edges.cut[0] & real_keys)
    frame = edges.to_frame()
    assert len(frame) == int(edges.cut.sum()) and set(frame["layer"]) == {1}


def test_isolation_refuses_bad_input(tiny_llama):
    sentiment = tasks.load("sentiment")
    pool, test = sentiment.split(2, seed=0)
    batch = PromptBatch.from_prompts(tiny_llama, build_prompts(pool, 1, test.examples, seed=0))
    with pytest.raises(IclMechError, match="row 2"):
        isolation_figure(tiny_llama, batch, IsolateLabelWords([0]), row=2)
    with pytest.raises(IclMechError, match=r"layers \[1\].*layers \[0, 2\]"):
        cut_edges(tiny_llama, batch, IsolateLabelWords([0, 2])).figure(0, layers=[1])
    with pytest.raises(IclMechError, match="no hook on"):
        cut_edges(tiny_llama, batch, AddVector("blocks.0.hook_resid_post", torch.ones(64)))
    with pytest.raises(IclMechError, match="cuts no attention edge"):
        cut_edges(tiny_llama, batch, IsolateRandomWords([0], n=0))


# sites


def test_a_task_vector_patch_is_one_position_at_one_layer_per_row(model, batch):
    layer = model.cfg.n_layers // 2
    values = torch.randn(len(batch), model.cfg.n_layers, model.cfg.d_model)
    theta = TaskVector(values, range(model.cfg.n_layers), {"task": "made-up"})
    sites = record_sites(model, batch, theta.intervention(layer=layer))
    frame = sites.to_frame()
    targets = [row.target for row in batch.rows]
    assert sorted(zip(frame["layer"], frame["row"], frame["position"])) == [
        (layer, b, target) for b, target in enumerate(targets)
    ]
    assert frame["point"].tolist() == [f"blocks.{layer}.hook_resid_post"] * len(batch)
    for row, target in enumerate(targets):
        columns = real(batch, row)
        labels, tokens, values = sites.grid(row)
        assert labels == list(range(model.cfg.n_layers)) and [t for t, _, _ in tokens] == columns
        assert torch.nonzero(values).tolist() == [[layer, columns.index(target)]]
        (ax,) = [a for a in sites.figure(row).axes if a.images]
        assert (ax.images[0].get_array() > 0).tolist() == (values > 0).tolist()
        assert tick_texts(ax) == [_visible(batch.pieces[row][p]) for p in columns]
        page = sites.html(row)
        self_contained(page)
        assert html_lines(page) == [columns, columns]  # the tokens, then the one layer
        assert page.count(f"background:{CHANGED_BACKGROUND}") == 2  # legend + the target


def test_per_row_positions_are_recorded_where_they_sit_under_left_padding(model, batch):
    first_label = torch.tensor([row.labels[0][0] for row in batch.rows])
    assert len(set(first_label.tolist())) > 1  # padding moves them
    point = "blocks.0.hook_resid_post"
    patch = Patch(point, torch.randn(model.cfg.d_model), positions=first_label)
    frame = record_sites(model, batch, patch).to_frame()
    assert list(zip(frame["row"], frame["position"])) == list(enumerate(first_label.tolist()))


def test_icv_steering_touches_every_layer_and_every_position(model, batch, icv):
    sites = record_sites(model, batch, ICVSteering(icv, 0.1))
    frame = sites.to_frame()
    assert set(frame["point"]) == {f"blocks.{i}.hook_mlp_out" for i in range(model.cfg.n_layers)}
    # padding too, wherever it holds something to steer: a model with a zero pad embedding (the
    # tiny Llama's bridge) holds exactly zero there, which norm-keeping steering leaves as it is
    capture = Capture(sorted(set(frame["point"])), positions="all")
    with torch.no_grad(), attach(model, capture):
        model(batch.tokens, attention_mask=batch.attention_mask)
    for row in range(len(batch)):
        for layer in range(model.cfg.n_layers):
            held = capture.activations[f"blocks.{layer}.hook_mlp_out"][row].abs().sum(-1) > 0
            steered = [p for p in range(batch.seq_len) if p in real(batch, row) or held[p]]
            assert sites.positions(row, layer) == steered
        drawn = frame[(frame["row"] == row) & frame["drawn"]]
        assert sorted(set(drawn["position"])) == real(batch, row)
        labels, tokens, values = sites.grid(row)
        assert len(tokens) == len(real(batch, row)) and bool((values == 1).all())


@pytest.mark.parametrize("where", ["new", "prompt"])
def test_icv_under_generation_touches_the_chosen_side(model, icv, where):
    new = 4
    sites = record_generation_sites(
        model, PROMPTS, ICVSteering(icv, 0.1, positions=where), max_new_tokens=new,
        stop_at_eos=False,
    )  # fmt: skip
    length = sites.prompt_length
    fed = range(length, length + new - 1)  # the last new token is never fed back
    for row in range(len(PROMPTS)):
        prompt = [p for p in range(length) if bool(sites.drawn[row, p])]
        for layer in range(model.cfg.n_layers):
            touched = sites.positions(row, layer)
            if where == "new":
                assert touched == list(fed)
            elif is_bridge(model):  # padding only where it is not zero (see above)
                assert set(prompt) <= set(touched) <= set(range(length))
            else:
                assert touched == list(range(length))
        prompt = [t for t, _, role in sites.tokens(row) if role == "prompt"]
        assert len(prompt) == int(sites.drawn[row, :length].sum()) and prompt[-1] == length - 1
        assert [t for t, _, role in sites.tokens(row) if role == "new"] == list(
            range(length, length + new)
        )
        (ax,) = [a for a in sites.figure(row).axes if a.images]
        assert len(tick_texts(ax)) == len(prompt) + new and ax.lines  # the prompt | new line
        self_contained(sites.html(row))
    assert len(sites.completions) == len(PROMPTS)


def test_no_op_items_record_no_sites(model, batch, icv):
    point = "blocks.1.hook_resid_post"
    capture = Capture(point)
    with torch.no_grad():
        run(model, batch, capture)
    same = Patch(point, capture.activations[point], positions="all")
    zero = AddVector(point, torch.randn(model.cfg.d_model), strength=0.0)
    sites = record_sites(model, batch, ICVSteering(icv, 0.0), same, zero)
    assert len(sites) == 0 and sites.to_frame().empty
    assert len(sites.changed) == 2  # both hooks ran, none changed; λ = 0 attaches no hook
    assert "no site changed" in sites.html(0)
    steered = record_generation_sites(model, PROMPTS[:2], ICVSteering(icv, 0.0), max_new_tokens=3)
    assert len(steered) == 0


@dataclass(repr=False)
class NoHooks(Intervention):
    def specs(self, model, batch):
        return []


def test_sites_refuse_bad_input_before_the_forward(tiny_llama):
    sentiment = tasks.load("sentiment")
    pool, test = sentiment.split(2, seed=0)
    batch = PromptBatch.from_prompts(tiny_llama, build_prompts(pool, 1, test.examples, seed=0))
    assert len(record_sites(tiny_llama, batch, NoHooks())) == 0
    sites = record_sites(tiny_llama, batch, AddVector("blocks.0.hook_resid_post", torch.ones(64)))
    with pytest.raises(IclMechError, match="row 2"):
        sites.figure(2)
    with pytest.raises(IclMechError, match=r"layers \[7\]"):
        sites.figure(0, layers=[7])
    with pytest.raises(IclMechError, match="one batch"):
        record_generation_sites(tiny_llama, PROMPTS, NoHooks(), batch_size=2)


# task vectors over tasks


def synthetic_curves() -> pd.DataFrame:
    generator = torch.Generator().manual_seed(0)
    rows = [
        (task, mode, split, layer, float(torch.rand(1, generator=generator)))
        for task in ("zebra", "apple", "mango")
        for mode in ("replace", "add")
        for split in ("dev", "test")
        for layer in range(5)
    ]
    return pd.DataFrame(rows, columns=["task", "mode", "split", "layer", "accuracy"])


@pytest.mark.parametrize("source", ["synthetic", "committed"])
def test_heatmap_cells_are_the_frame_values(source):
    curves = synthetic_curves() if source == "synthetic" else pd.read_csv(CURVES)
    for split in ("dev", "test"):
        figure = accuracy_heatmap(curves, split)
        panels = [ax for ax in figure.axes if ax.images and ax.get_title()]
        assert len(panels) == 2
        tasks_drawn = [t.get_text() for t in panels[0].get_yticklabels()]  # the panels share it
        assert tasks_drawn == list(dict.fromkeys(curves["task"]))
        for ax, mode in zip(panels, ("replace", "add")):
            grid = ax.images[0].get_array()
            part = curves[(curves["mode"] == mode) & (curves["split"] == split)]
            for task, layer, accuracy in zip(part["task"], part["layer"], part["accuracy"]):
                assert grid[tasks_drawn.index(task), layer] == accuracy
        page = accuracy_heatmap_html(curves, split)
        self_contained(page)
        assert page.count("<td") == len(curves[curves["split"] == split])


def test_heatmap_refuses_frames_it_cannot_draw():
    curves = synthetic_curves()
    with pytest.raises(IclMechError, match="mode='swap'"):
        accuracy_matrix(curves, "swap")
    with pytest.raises(IclMechError, match="lacks columns"):
        accuracy_heatmap(curves.drop(columns="accuracy"))
    with pytest.raises(IclMechError, match="several accuracies"):
        accuracy_matrix(pd.concat([curves, curves.head(1)]))


# logit lens


def test_logit_lens_of_the_final_residual_is_the_models_own_prediction(model, batch):
    last = model.cfg.n_layers - 1
    capture = Capture(f"blocks.{last}.hook_resid_post", positions="last")
    with torch.no_grad():
        logits = run(model, batch, capture)[:, -1]
    own = logits.float().softmax(-1).topk(5)
    for row in range(len(batch)):
        residual = capture.activations[f"blocks.{last}.hook_resid_post"][row]
        lens = logit_lens(model, residual[None], layers=[last])
        assert lens.token_ids[0].tolist() == own.indices[row].tolist()
        assert torch.allclose(lens.probabilities[0], own.values[row], atol=1e-5)
    values = torch.randn(2, model.cfg.n_layers, model.cfg.d_model)
    theta = TaskVector(values, range(model.cfg.n_layers), {"task": "made-up"})
    lens = logit_lens(model, theta)
    assert lens.layers == list(range(model.cfg.n_layers)) and lens.name == "made-up"
    again = logit_lens(model, values.mean(0))
    assert torch.equal(lens.token_ids, again.token_ids)
    (ax,) = [a for a in lens.figure().axes if a.texts]
    assert ax.images[0].get_array().tolist() == lens.probabilities.numpy().tolist()
    cells = [[_visible(t)[:12] for t in tokens] for tokens in lens.tokens]
    assert [t.get_text() for t in ax.texts] == [t for row in cells for t in row]
    page = lens.html()
    self_contained(page)
    assert len(html_lines(page)) == model.cfg.n_layers
    frame = lens.to_frame()
    assert len(frame) == 5 * model.cfg.n_layers and frame["rank"].tolist()[:5] == [1, 2, 3, 4, 5]


def test_logit_lens_refuses_bad_vectors(tiny_llama):
    with pytest.raises(IclMechError, match=r"expected \[layer, d_model\]"):
        logit_lens(tiny_llama, torch.randn(3, 32))
    with pytest.raises(IclMechError, match="out of range"):
        logit_lens(tiny_llama, torch.randn(1, 64), layers=[9])


def test_the_reproduction_writes_the_heatmap_and_the_lens(tiny_llama, tmp_path):
    report = reproduce(
        "task-vectors", tiny_llama, quick=True, progress=False, out=tmp_path,
        tasks=("country_capital",), pairs=(), n_dev=3, n_test=3, n_demonstrations=2,
        max_new_tokens=1, batch_size=4, groups=2,
    )  # fmt: skip
    assert (tmp_path / "task_vectors_heatmap.png").is_file()
    assert (tmp_path / "task_vectors_logit_lens.png").is_file()
    ax = next(a for a in report.figures["heatmap"].axes if a.get_title() and a.images)
    matrix = accuracy_matrix(report.tables["curves"], "replace", "dev")
    assert ax.images[0].get_array().tolist() == matrix.to_numpy().tolist()
    lens = theta_lens(tiny_llama, tasks.load("country_capital"), report.settings)
    pd.testing.assert_frame_equal(report.tables["logit_lens"], lens.to_frame())
