"""ICL state vectors on tiny models: the position rule, θ, batching, inner and momentum
optimisation, divide-and-conquer aggregation, errors and the saved vector."""

import random

import pytest
import torch

from icl_mech import IclMechError, PromptBatch, attach, tasks, tiny_model
from icl_mech.activations import read_activations
from icl_mech.context_vectors.aggregation import PatchStates, aggregate, divide_and_conquer
from icl_mech.context_vectors.states import (
    CaptureStates,
    StateVectors,
    extract_states,
    state_positions,
)
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.task_vectors import TaskVector, draw_dummies, extract
from icl_mech.threads import torch_threads


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def task():
    return tasks.load("antonym").with_examples(tasks.load("antonym").examples[:60])


def _sets(task, n_sets=4, n=3, seed=0):
    rng = random.Random(seed)
    return [task.sample_demonstrations(n, rng) for _ in range(n_sets)]


def _multi_token(model, task):
    """Examples whose answer takes several tokens, and the others."""
    tokens = [
        len(model.tokenizer.encode(task.answer_prefix + e.y, add_special_tokens=False))
        for e in task.examples
    ]
    multi = [e for e, n in zip(task.examples, tokens) if n > 1]
    single = [e for e, n in zip(task.examples, tokens) if n == 1]
    return multi, single


def test_final_state_is_theta(tiny, task):
    sets = _sets(task)
    dummies = draw_dummies(task, sets, n_dummies=2, seed=1)
    states = extract_states(tiny, task, sets, dummies, batch_size=3)
    theta = extract(tiny, task, sets, dummies, batch_size=5)
    assert states.values.shape == (4, 4, tiny.cfg.n_layers, tiny.cfg.d_model)
    final = states.inner(last=1)
    torch.testing.assert_close(final.values, theta.values, atol=1e-5, rtol=0)
    assert final.kind == "state-vector" and final.provenance["method"] == "inner"


def test_state_after_each_demonstration_is_the_truncated_prompts_last_token(tiny, task):
    multi, single = _multi_token(tiny, task)
    assert multi, "the test needs an answer of several tokens"
    demos = [single[0], multi[0], single[1], multi[1]]  # answers 2 and 4 take several tokens
    other = [single[2], single[3], multi[2], single[4]]
    dummies = [[single[5], single[6]], [single[7]] * 2]
    states = extract_states(tiny, task, [demos, other], dummies, batch_size=4)
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(tiny.cfg.n_layers)]
    for s, chosen in enumerate([demos, other]):
        for i in range(1, len(chosen) + 1):
            before = chosen[: i - 1]
            query = chosen[i - 1].x
            prompt = (
                ICLPrompt.build(task, before, query) if before else ICLPrompt.zero_shot(task, query)
            )
            alone = read_activations(tiny, [prompt], names)[0]
            torch.testing.assert_close(states.values[s, i - 1], alone, atol=1e-4, rtol=0)
    # the rule is not "the answer's last token", nor the token after the answer's first
    batch = PromptBatch.from_prompts(tiny, [ICLPrompt.build(task, demos, single[5])])
    where = state_positions(batch)[0].tolist()
    labels = batch.rows[0].labels
    assert len(labels[1]) > 1
    assert where == [tokens[0] - 1 for tokens in labels] + [batch.seq_len - 1]


def test_batched_equals_unbatched(tiny, task):
    sets = _sets(task, n_sets=5, n=2, seed=3)
    dummies = draw_dummies(task, sets, n_dummies=2, seed=0)
    one = extract_states(tiny, task, sets, dummies, batch_size=1)
    four = extract_states(tiny, task, sets, dummies, batch_size=4)
    torch.testing.assert_close(one.values, four.values, atol=1e-5, rtol=0)


def _hand_made(values):
    return StateVectors(torch.tensor(values, dtype=torch.float32), (0,), {"task": "hand"})


def test_inner_is_the_mean_of_the_last_states():
    # one set, 4 steps, one layer, d_model 2
    states = _hand_made([[[[1.0, 0.0]], [[3.0, 2.0]], [[5.0, 4.0]], [[9.0, 8.0]]]])
    torch.testing.assert_close(states.inner(last=1).values, torch.tensor([[[9.0, 8.0]]]))
    torch.testing.assert_close(states.inner(last=2).values, torch.tensor([[[7.0, 6.0]]]))
    torch.testing.assert_close(states.inner(last=3).values, torch.tensor([[[17 / 3, 14 / 3]]]))
    torch.testing.assert_close(states.inner().values, torch.tensor([[[4.5, 3.5]]]))
    single = _hand_made([[[[2.0, -1.0]]]])
    torch.testing.assert_close(single.inner(last=1).values, torch.tensor([[[2.0, -1.0]]]))
    assert states.inner(last=2).provenance["last"] == 2


def test_momentum_is_the_weighted_mean_of_differences():
    # states 1, 3, 5, 9 (and 0, 2, 4, 8): differences 2, 2, 4 with weights β², β, 1
    states = _hand_made([[[[1.0, 0.0]], [[3.0, 2.0]], [[5.0, 4.0]], [[9.0, 8.0]]]])
    # β = 0.5: weights 0.25, 0.5, 1 → m = (0.5 + 1 + 4) / 1.75 = 22/7 in both coordinates
    m = 5.5 / 1.75
    got = states.momentum(beta=0.5, lr=1.0, last=2)
    torch.testing.assert_close(got.values, torch.tensor([[[7.0 + m, 6.0 + m]]]))
    got = states.momentum(beta=0.5, lr=0.5, last=1)
    torch.testing.assert_close(got.values, torch.tensor([[[9.0 + m / 2, 8.0 + m / 2]]]))
    # β = 0: only the newest difference (4)
    got = states.momentum(beta=0.0, lr=2.0, last=1)
    torch.testing.assert_close(got.values, torch.tensor([[[9.0 + 8.0, 8.0 + 8.0]]]))
    got = states.momentum(beta=0.0, lr=1.0, last=4)
    torch.testing.assert_close(got.values, torch.tensor([[[4.5 + 4.0, 3.5 + 4.0]]]))
    assert got.provenance | {"beta": 0.0, "lr": 1.0, "last": 4} == got.provenance
    assert got.provenance["method"] == "momentum"


def test_the_paper_weights_at_beta_one_half():
    # six states, differences one-hot: the momentum step is the weights 1, 2, 4, 8, 16 / 31
    values = torch.zeros(1, 6, 1, 5)
    for step in range(1, 6):
        values[0, step:, 0, step - 1] += 1.0
    states = StateVectors(values, (0,))
    step = states.momentum(beta=0.5, lr=1.0, last=1).values[0, 0] - values[0, -1, 0]
    torch.testing.assert_close(step, torch.tensor([1.0, 2, 4, 8, 16]) / 31)


def _aggregation_parts(task):
    demonstrations = list(task.examples[:7])
    slots = list(task.examples[10:14])
    dummies = list(task.examples[20:22])
    return demonstrations, slots, dummies


def test_divide_and_conquer_patches_act_and_own_states_change_nothing(tiny, task):
    demonstrations, slots, dummies = _aggregation_parts(task)
    layers = list(range(tiny.cfg.n_layers))
    vector = divide_and_conquer(tiny, task, demonstrations, 3, dummies, slots, batch_size=2)
    assert vector.values.shape == (1, tiny.cfg.n_layers, tiny.cfg.d_model)
    assert vector.provenance["n_groups"] == 3 and vector.provenance["last_group_size"] == 1
    # unpatched aggregation prompt: 3 slots (one per group) then each dummy
    plain = extract_states(tiny, task, [slots[:3]], [dummies], batch_size=2)
    unpatched = plain.inner(last=1).values[0]
    assert (vector.values[0] - unpatched).abs().max() > 1e-3
    # patching each slot with its own state gives the unpatched final state back
    own = plain.values[0, :3]
    again = aggregate(tiny, task, own, layers, slots, dummies, batch_size=2)
    torch.testing.assert_close(again, unpatched, atol=1e-5, rtol=0)


def test_patch_states_writes_the_values_at_the_state_positions(tiny_llama, task):
    prompts = [ICLPrompt.build(task, task.examples[i : i + 2], task.examples[30]) for i in (0, 5)]
    batch = PromptBatch.from_prompts(tiny_llama, prompts)
    values = torch.randn(2, 2, 1, tiny_llama.cfg.d_model)  # per row, 2 slots, layer 1
    probe = CaptureStates((1,))
    with torch.no_grad(), attach(tiny_llama, PatchStates(values, (1,)), probe, batch=batch):
        tiny_llama(batch.tokens, attention_mask=batch.attention_mask)
    torch.testing.assert_close(probe.states[1][:, :2], values[:, :, 0])
    with pytest.raises(IclMechError, match="3 state positions"):
        with attach(tiny_llama, PatchStates(torch.zeros(3, 1, 64), (1,)), batch=batch):
            pass


def test_errors_name_the_value(tiny_llama, task):
    sets = _sets(task, n_sets=2)
    with pytest.raises(IclMechError, match=r"no demonstration sets"):
        extract_states(tiny_llama, task, [], [])
    with pytest.raises(IclMechError, match=r"set 1 is empty"):
        extract_states(tiny_llama, task, [sets[0], []])
    with pytest.raises(IclMechError, match=r"sizes \[3, 2\]"):
        extract_states(tiny_llama, task, [sets[0], sets[1][:2]])
    states = _hand_made([[[[1.0, 0.0]], [[3.0, 2.0]], [[5.0, 4.0]]]])
    for last in (0, 4):
        with pytest.raises(IclMechError, match=rf"last={last}.*3 steps"):
            states.inner(last=last)
    for beta in (1.0, -0.1, 1.5):
        with pytest.raises(IclMechError, match=rf"beta={beta}"):
            states.momentum(beta=beta)
    with pytest.raises(IclMechError, match=r"lr=nan"):
        states.momentum(lr=float("nan"))
    with pytest.raises(IclMechError, match=r"at least 2 steps"):
        _hand_made([[[[1.0, 0.0]]]]).momentum()
    demonstrations, slots, dummies = _aggregation_parts(task)
    with pytest.raises(IclMechError, match=r"group_size=7 splits 7 demonstrations into 1"):
        divide_and_conquer(tiny_llama, task, demonstrations, 7, dummies, slots)
    with pytest.raises(IclMechError, match=r"group_size=0"):
        divide_and_conquer(tiny_llama, task, demonstrations, 0, dummies, slots)
    with pytest.raises(IclMechError, match=r"2 slots given for 3 groups"):
        divide_and_conquer(tiny_llama, task, demonstrations, 3, dummies, slots[:2])


def test_state_vector_round_trips_and_refuses_another_width(tiny_llama, task, tmp_path):
    states = extract_states(tiny_llama, task, _sets(task, n_sets=2), n_dummies=2, seed=4)
    vector = states.momentum(beta=0.5, lr=0.5, last=2)
    loaded = TaskVector.load(vector.save(tmp_path / "state"), model=tiny_llama)
    torch.testing.assert_close(loaded.values, vector.values)
    assert loaded.kind == "state-vector" and loaded.provenance["method"] == "momentum"
    assert loaded.provenance["beta"] == 0.5 and loaded.layers == vector.layers
    # it applies like θ: replacement at one layer
    assert type(vector.intervention(layer=1)).__name__ == "ReplaceResidual"
    narrow = tiny_model("llama", d_model=32)
    with pytest.raises(IclMechError, match="width 64"):
        TaskVector.load(tmp_path / "state", model=narrow)
    with pytest.raises(IclMechError, match="d_model=64"):
        vector.check_fits(narrow)


def test_frame_and_repr():
    states = _hand_made([[[[1.0, 0.0]], [[0.0, 2.0]], [[3.0, 0.0]]]] * 2)
    frame = states.to_frame()
    assert list(frame.columns) == ["set", "step", "layer", "norm", "cosine_to_final"]
    assert len(frame) == 2 * 3 and len(states) == 2
    assert frame["cosine_to_final"].tolist() == pytest.approx([1, 0, 1] * 2)
    assert frame["norm"].tolist() == pytest.approx([1, 2, 3] * 2)
    assert "steps=3" in repr(states)
