"""The scoring rule (icl_mech.scoring): the first content token, reached greedily.

Real tokenizers split " 22" into ' ', '2', '2'; the bare space must not be what is scored.
Every score is checked against references written here: a greedy loop of full forwards,
decoded to text; full patched forwards, one layer at a time.
"""

import pytest
import torch

from icl_mech import IclMechError, load_model, scoring, tasks
from icl_mech.check import CheckSettings, check
from icl_mech.evaluation import build_prompts, icl_accuracy
from icl_mech.function_vectors import Settings as FvSettings
from icl_mech.function_vectors import effect_prompts, indirect_effects, naive_indirect_effects
from icl_mech.function_vectors import evaluate as fv_evaluate
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.prompt_batch import PromptBatch
from icl_mech.task_vectors import AddToResidual, ReplaceResidual, greedy, sweep_hits
from icl_mech.task_vectors import Settings as TvSettings
from icl_mech.task_vectors import evaluate as tv_evaluate
from icl_mech.threads import torch_threads

MONTHS = "January February March April May June July August September October November December"


def successor_task():
    return tasks.from_records("successor", [{"input": str(i), "output": str(i + 1)}
                                            for i in range(3, 40)])  # fmt: skip


def dates_task():
    months = MONTHS.split()
    records = [{"input": f"2021-{m + 1:02d}-{d:02d}", "output": f"{d} {months[m]} 2021"}
               for m in range(0, 12, 2) for d in (3, 9, 14, 21, 27)]  # fmt: skip
    return tasks.from_records("dates", records)


def symbols_task():
    names = {"dollar": "$", "percent": "%", "hash": "#", "at": "@", "ampersand": "&",
             "plus": "+", "equals": "=", "asterisk": "*", "tilde": "~", "caret": "^",
             "question": "?", "exclamation": "!"}  # fmt: skip
    return tasks.from_records("symbols", [{"input": k, "output": v} for k, v in names.items()])


def collapsing_task():
    """Forty distinct answers that all start with the digit 2 (scored token '2')."""
    return tasks.from_records("twenties", [{"input": f"item {i}", "output": f"2{i % 10}{i // 10}"}
                                           for i in range(40)])  # fmt: skip


def scored_text(tokenizer, task, answer: str) -> str:
    """The reference's own reading of the rule: the gold text up to the end of its first token
    that is not whitespace."""
    ids = tokenizer.encode(task.answer_prefix + answer, add_special_tokens=False)
    for n, token in enumerate(ids):
        if tokenizer.decode([token]).strip():
            return tokenizer.decode(ids[: n + 1])
    raise AssertionError(f"{answer!r} has no content")


def reference_correct(model, prompt: ICLPrompt, steps: int = 4) -> bool:
    """Greedy continuation by full forwards (no cache, no hooks), decoded and compared with the
    gold answer's text; at most ``steps`` tokens, fewer once the text is as long as the gold's."""
    gold = scored_text(model.tokenizer, prompt.task, prompt.answer)
    tokens = PromptBatch.from_prompts(model, [prompt]).tokens
    start, text = tokens.shape[1], ""
    with torch.no_grad():
        while len(text) < len(gold) and tokens.shape[1] - start < steps:
            following = model(tokens)[0, -1].argmax()
            tokens = torch.cat([tokens, following.view(1, 1)], dim=1)
            text = model.tokenizer.decode(tokens[0, start:])
    return text.startswith(gold)


@pytest.fixture(scope="module", params=["embedded", "gemma-3-270m"])
def real(request):
    with torch_threads(1):
        yield load_model() if request.param == "embedded" else load_model(request.param)


@pytest.mark.embedded
@pytest.mark.parametrize("make", [successor_task, dates_task, symbols_task])
@pytest.mark.parametrize("shots", [0, 3])
def test_accuracy_equals_a_decoded_greedy_reference(real, make, shots):
    task = make()
    result = icl_accuracy(real, task, n_demonstrations=shots, n_test=6, progress=False)
    pool, test = task.split(6, 0)
    prompts = build_prompts(pool, shots, test.examples, 0)
    assert result.queries == [e.x for e in test.examples]
    assert result.correct == [reference_correct(real, p) for p in prompts]


@pytest.mark.embedded
def test_numbers_are_scored_by_a_digit_not_the_space(real):
    task = successor_task()
    tokenizer = real.tokenizer
    for example in task.examples:
        gold = scoring.gold(tokenizer, task, example.y)
        assert tokenizer.decode([gold.content]) == example.y[0]  # a digit
        assert [tokenizer.decode([t]) for t in gold.bare] == [" "]  # the split-off space
    dates = dates_task()
    assert {tokenizer.decode([scoring.gold(tokenizer, dates, e.y).content]).strip()
            for e in dates.examples} == {"3", "9", "1", "2"}  # fmt: skip
    result = icl_accuracy(real, task, n_demonstrations=0, n_test=12, progress=False)
    assert set(result.gold) <= {tokenizer.encode(str(d), add_special_tokens=False)[-1]
                                for d in range(10)}  # fmt: skip


@pytest.mark.embedded
def test_answers_that_collapse_are_refused_before_any_forward(real, monkeypatch):
    task = collapsing_task()
    monkeypatch.setattr(real, "forward", lambda *a, **k: pytest.fail("a forward pass ran"))
    with pytest.raises(IclMechError, match=r"all 40 distinct answers .* same token '2'.*template"):
        icl_accuracy(real, task, n_test=12, progress=False)
    with pytest.raises(IclMechError, match="same token '2'"):
        tv_evaluate(real, [task], TvSettings.quick(), progress=False)


def test_collapse_is_refused_at_every_entry_point(tiny_llama, monkeypatch):
    task = collapsing_task()
    clean, shuffled = effect_prompts(task, 2, n_demonstrations=2, seed=0)
    monkeypatch.setattr(tiny_llama, "forward", lambda *a, **k: pytest.fail("a forward ran"))
    calls = [
        lambda: icl_accuracy(tiny_llama, task, n_test=12, progress=False),
        lambda: tv_evaluate(tiny_llama, [task], TvSettings.quick(), progress=False),
        lambda: fv_evaluate(tiny_llama, [task], FvSettings.quick(), progress=False),
        lambda: indirect_effects(tiny_llama, clean, shuffled),
        lambda: naive_indirect_effects(tiny_llama, clean, shuffled),
        lambda: check(tiny_llama, CheckSettings.quick(io_tasks=(task,)), progress=False),
    ]
    for call in calls:
        with pytest.raises(IclMechError, match=r"all 40 distinct answers .* the same token"):
            call()


def bare_task():
    """Answers that the tiny tokenizer starts with a bare ' ' (' $5' -> ' ', '$', '5'), and a
    few that it does not."""
    symbols = "$#%&@"
    records = [{"input": f"w{i}", "output": f"{symbols[i % 5]}{i % 7}"} for i in range(10)]
    records += [{"input": "hot", "output": "cold"}, {"input": "up", "output": "down"}]
    return tasks.from_records("bare", records)


@pytest.mark.parametrize("mode", ["replace", "add"])
def test_the_sweep_scores_bare_answers_like_unbatched_greedy(tiny_llama, mode):
    model, task = tiny_llama, bare_task()
    prompts = [ICLPrompt.zero_shot(task, e) for e in task.examples[8:]]  # 2 bare, 2 plain
    batch = PromptBatch.from_prompts(model, prompts)
    golds = scoring.golds(model, prompts)
    assert [bool(g.bare) for g in golds] == [True, True, False, False]
    n_layers, d_model = model.cfg.n_layers, model.cfg.d_model
    vectors = torch.randn(
        len(prompts), n_layers, d_model, generator=torch.Generator().manual_seed(0)
    )
    reference = []  # per layer: the patched greedy continuation of each row, full forwards
    for layer in range(n_layers):
        item = (ReplaceResidual(vectors[:, layer], layer) if mode == "replace"
                else AddToResidual({layer: vectors[:, layer]}, 0.7))  # fmt: skip
        reference.append(greedy(model, batch, item, max_new_tokens=3).tokens)
    # the golds' own tokens, and golds made of what the patched model says at layer 1 (so some
    # rows are right): bare rows need their first token, then the next one
    made = [scoring.Gold("", (int(t[0]),), int(t[1])) if g.bare else
            scoring.Gold("", (), int(t[0])) for g, t in zip(golds, reference[1])]  # fmt: skip
    for chosen in (golds, made):
        hits = sweep_hits(model, batch, chosen, vectors, mode, strength=0.7, groups=2)
        expected = [[tuple(row[: len(g.tokens)].tolist()) == g.tokens
                     for row, g in zip(tokens, chosen)] for tokens in reference]  # fmt: skip
        assert hits.tolist() == expected
    assert hits[1].all()


def test_the_indirect_effect_teacher_forces_bare_answers(tiny_llama):
    task = bare_task()
    clean, shuffled = effect_prompts(task, 6, n_demonstrations=2, seed=1)
    golds = scoring.golds(tiny_llama, shuffled)
    assert any(g.bare for g in golds) and not all(g.bare for g in golds)
    fast = indirect_effects(tiny_llama, clean, shuffled, batch_size=4)
    slow = naive_indirect_effects(tiny_llama, clean, shuffled, batch_size=4)
    torch.testing.assert_close(fast.effects, slow.effects, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        fast.shuffled_probability, slow.shuffled_probability, atol=1e-5, rtol=1e-4
    )
