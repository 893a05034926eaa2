"""Bad input raises IclMechError before any forward pass (findings 6, 7, 8, 10).

Each finding has one test, parametrised over its sub-cases; a counting hook on ``hook_embed``
proves that no forward pass ran. A Hypothesis property checks position selectors and vector
shapes / dtypes: every input either runs and equals the computation done by hand, or is refused
before the forward.
"""

import random
import subprocess
import sys
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from conftest import changed_files, checkout_state
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from icl_mech import (
    Ablate,
    AddVector,
    Capture,
    Demonstration,
    HookSpec,
    IclMechError,
    ICLPrompt,
    Patch,
    PromptBatch,
    Task,
    load_model,
    models,
    run,
    tasks,
)
from icl_mech.anchors import saliency
from icl_mech.evaluation import build_prompts, icl_accuracy
from icl_mech.icv import generate
from icl_mech.threads import torch_threads

RESID = "blocks.1.hook_resid_post"


@contextmanager
def forwards(model):
    """Count forward passes (every one runs the embedding)."""
    calls = []
    model.hook_embed.add_hook(lambda act, hook: calls.append(1), is_permanent=True)
    try:
        yield calls
    finally:
        model.hook_embed.remove_hooks("fwd", including_permanent=True)


@pytest.fixture(autouse=True)
def one_thread():
    # tiny forwards are many times faster on one thread when the cores are shared
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def sentiment():
    return tasks.load("sentiment")


@pytest.fixture(scope="module")
def batch(tiny_llama, sentiment):
    return PromptBatch.from_prompts(tiny_llama, build_prompts(sentiment, 1, sentiment.examples[:2]))


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A one-layer Hugging Face Llama folder with a 64-token context (no hub needed)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("hf-tiny")  # a path with "llama" confuses TL
    tokenizer = models.tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# finding 6: a label word merged into the template's last token


@pytest.mark.parametrize("kind", ["classification", "io"])
def test_finding_6_label_merged_into_template_is_refused(tiny_llama, kind):
    examples = (Demonstration("a fine film", "positive"), Demonstration("a dull film", "negative"))
    classes = ("positive", "negative") if kind == "classification" else None
    with forwards(tiny_llama) as calls, pytest.raises(IclMechError, match="(?s)space.*label"):
        task = Task("merged", examples, "Review: {x} => ", classes, answer_prefix="")
        prompt = ICLPrompt.build(task, examples[:1], examples[1])
        run(tiny_llama, PromptBatch.from_prompts(tiny_llama, [prompt]))
    assert calls == []


# finding 7: silent wrong results


def _two_class(n_b: int = 10):
    examples = [Demonstration(f"good {i}", "positive") for i in range(10)]
    examples += [Demonstration(f"bad {i}", "negative") for i in range(n_b)]
    return Task("two", tuple(examples), "Review: {x}\nSentiment:", ("positive", "negative"))


def _nan(d: int) -> torch.Tensor:
    vector = torch.zeros(d)
    vector[3] = float("nan")
    return vector


FINDING_7 = {
    "empty query": lambda m, b, t: run(
        m, PromptBatch.from_prompts(m, [ICLPrompt.build(t, t.examples[:1], "")])
    ),
    "0 classes": lambda m, b, t: Task("none", (), classes=()),
    "1 class": lambda m, b, t: Task("one", (Demonstration("a", "yes"),), classes=("yes",)),
    "nan vector": lambda m, b, t: run(m, b, AddVector(RESID, _nan(m.cfg.d_model))),
    "inf patch": lambda m, b, t: run(
        m, b, Patch(RESID, torch.full((m.cfg.d_model,), float("inf")))
    ),
    "nan scale": lambda m, b, t: run(
        m, b, AddVector(RESID, torch.ones(m.cfg.d_model), strength=float("nan"))
    ),
    "nan mean": lambda m, b, t: run(m, b, Ablate(RESID, mode="mean", mean=_nan(m.cfg.d_model))),
    "positions=True": lambda m, b, t: run(m, b, AddVector(RESID, torch.ones(64), positions=True)),
    "positions=False": lambda m, b, t: run(m, b, AddVector(RESID, torch.ones(64), positions=False)),
    "float position tensor": lambda m, b, t: run(
        m, b, Patch(RESID, torch.zeros(64), positions=torch.tensor([1.7, 2.2]))
    ),
    "fractional layer": lambda m, b, t: saliency(m, b, layers=[1.7]),
    "split(-1)": lambda m, b, t: t.split(n_test=-1),
    "split beyond the task": lambda m, b, t: t.split(n_test=len(t.examples) + 1),
    "batch of another model": lambda m, b, t: run(
        m, PromptBatch.from_prompts(models.tiny_model("gpt2"), b.prompts)
    ),
}


@pytest.mark.parametrize("case", list(FINDING_7))
def test_finding_7_silent_wrong_results_are_refused(tiny_llama, batch, sentiment, case):
    with forwards(tiny_llama) as calls, pytest.raises(IclMechError):
        FINDING_7[case](tiny_llama, batch, sentiment)
    assert calls == []


def test_finding_7_split_warns_when_a_class_runs_out():
    with pytest.warns(UserWarning, match="class-balanced"):
        pool, test = _two_class(n_b=2).split(8)
    assert len(test.examples) == 8 and len(pool.examples) == 4
    assert not set(pool.examples) & set(test.examples)


# finding 8: deep crashes instead of clear errors


def _long_prompt(model, extra: int) -> str:
    words = ["good"] * (model.cfg.n_ctx - extra)
    return " ".join(words)


FINDING_8 = {
    "0-d vector": lambda m, b, f: run(m, b, AddVector(RESID, torch.tensor(1.0))),
    "positions tensor out of range": lambda m, b, f: run(
        m, b, AddVector(RESID, torch.ones(64), positions=torch.tensor([0, 999]))
    ),
    "positions=1.5": lambda m, b, f: run(m, b, AddVector(RESID, torch.ones(64), positions=1.5)),
    "HookSpec(5, fn)": lambda m, b, f: run(m, b, HookSpec(5, lambda a, h: None)),
    "HookSpec(name, None)": lambda m, b, f: run(m, b, HookSpec(RESID, None)),
    "meta vector": lambda m, b, f: run(m, b, AddVector(RESID, torch.ones(64, device="meta"))),
    "generate beyond n_ctx": lambda m, b, f: generate(
        m, _long_prompt(m, 20), max_new_tokens=40, progress=False
    ),
    "load_model('/nonexistent')": lambda m, b, f: load_model("/nonexistent"),
    "load_model('')": lambda m, b, f: load_model(""),
    "device='gpu'": lambda m, b, f: load_model(f, device="gpu"),
    "n_ctx=-1": lambda m, b, f: load_model(f, n_ctx=-1),
    "n_ctx above the maximum": lambda m, b, f: load_model(f, n_ctx=10_000),
    "sample_demonstrations(-1)": lambda m, b, f: tasks.load("sentiment").sample_demonstrations(
        -1, random.Random(0)
    ),
    "icl_accuracy(n_test=0)": lambda m, b, f: icl_accuracy(
        m, tasks.load("sentiment"), n_test=0, progress=False
    ),
}


@pytest.mark.parametrize("case", list(FINDING_8))
def test_finding_8_deep_crashes_become_clear_errors(tiny_llama, batch, hf_folder, case):
    with forwards(tiny_llama) as calls, pytest.raises(IclMechError):
        FINDING_8[case](tiny_llama, batch, hf_folder)
    assert calls == []


@pytest.mark.parametrize("convert", [lambda v: v.tolist(), lambda v: v.numpy()])
def test_finding_8_lists_and_numpy_vectors_are_converted(tiny_llama, batch, convert):
    vector = torch.randn(tiny_llama.cfg.d_model)
    with torch.no_grad():
        expected = run(tiny_llama, batch, AddVector(RESID, vector, positions="last"))
        got = run(tiny_llama, batch, AddVector(RESID, convert(vector), positions="last"))
    torch.testing.assert_close(got, expected)


# finding 10: every catalogued kind is available from icl_mech alone

METHOD_KINDS = {
    "capture",
    "patch",
    "add",
    "ablate",
    "saliency",
    "isolate",
    "isolate-label-words",
    "isolate-random-words",
    "query-attention",
    "anchor-reweight",
    "continue-positions",
    "icv",
    "task-vector",
    "task-vector-add",
}


def test_finding_10_kinds_are_available_without_importing_their_package():
    # a fresh interpreter: `import icl_mech` alone registers every kind (icl_mech.catalogue),
    # also without the text-metrics extra
    script = (
        "import sys\n"
        "for extra in ('vaderSentiment', 'profanity_check', 'sacrebleu'):\n"
        "    sys.modules[extra] = None\n"
        "import icl_mech\n"
        "print(type(icl_mech.make('saliency')).__name__)\n"
        "print(' '.join(icl_mech.kinds()))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    made, kinds = done.stdout.splitlines()
    assert made == "SaliencyProbe"
    assert METHOD_KINDS <= set(kinds.split())


# the property: run and match the computation by hand, or refuse before the forward

D_MODEL = 64
SELECTOR_NAMES = ["all", "last", "target", "labels", "label-first", "query", "template", "first"]


def _selectors(batch_size: int, seq_len: int, valid: bool):
    """Position selectors; with ``valid``, only ones that must run."""
    inside = st.integers(-seq_len, seq_len - 1)
    good = [
        st.sampled_from(SELECTOR_NAMES[:-1]),
        inside,
        st.lists(inside, min_size=1, max_size=3),
        st.lists(inside, min_size=batch_size, max_size=batch_size).map(torch.tensor),
        st.lists(st.booleans(), min_size=batch_size * seq_len, max_size=batch_size * seq_len).map(
            lambda bits: torch.tensor(bits).view(batch_size, seq_len)
        ),
    ]
    if valid:
        return st.one_of(*good)
    index = st.integers(-seq_len - 3, seq_len + 3)
    return st.one_of(
        *good,
        st.just(SELECTOR_NAMES[-1]),
        index,
        st.booleans(),
        st.sampled_from([1.5, -0.5, 2.0, float("nan")]),
        st.lists(index, max_size=3),
        st.lists(index, min_size=1, max_size=batch_size + 1).map(torch.tensor),
        st.lists(st.floats(0, seq_len - 1), min_size=batch_size, max_size=batch_size).map(
            torch.tensor
        ),
        st.lists(st.booleans(), min_size=seq_len, max_size=seq_len).map(torch.tensor),
    )


def _vectors(batch_size: int, seq_len: int, valid: bool):
    """(shape, dtype, container, poison, seed) of a vector; with ``valid``, one that must run."""
    good_shapes = [(D_MODEL,), (batch_size, D_MODEL), (batch_size, seq_len, D_MODEL)]
    bad_shapes = [(), (D_MODEL + 1,), (batch_size + 1, D_MODEL), (1, D_MODEL), (D_MODEL, 1)]
    good_dtypes = [torch.float32, torch.float64, torch.float16, torch.int64]
    return st.tuples(
        st.sampled_from(good_shapes if valid else good_shapes + bad_shapes),
        st.sampled_from(good_dtypes if valid else good_dtypes + [torch.bool]),
        st.sampled_from(["tensor", "list", "numpy"]),
        st.just(None) if valid else st.sampled_from([None, float("nan"), float("inf")]),
        st.integers(0, 2**16),
    )


def _make_vector(shape, dtype, kind, poison, seed):
    value = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    if poison is not None and value.numel():
        value.view(-1)[0] = poison
    value = value.to(dtype)
    if kind == "list":
        return value.tolist()
    return value.numpy() if kind == "numpy" else value


def _mask_by_hand(selector, batch) -> torch.Tensor:
    n, s = batch.tokens.shape
    mask = torch.zeros(n, s, dtype=torch.bool)
    if isinstance(selector, str):
        named = {
            "all": torch.ones(n, s, dtype=torch.bool),
            "target": batch.mask("target"),
            "labels": batch.label_mask(),
            "label-first": batch.label_mask(first_token_only=True),
        }
        if selector == "last":
            mask[:, s - 1] = True
            return mask
        return named[selector] if selector in named else batch.mask(selector)
    if isinstance(selector, torch.Tensor) and selector.dtype == torch.bool:
        return selector
    if isinstance(selector, torch.Tensor):
        for row, p in enumerate(selector.tolist()):
            mask[row, p % s] = True
        return mask
    for p in [selector] if isinstance(selector, int) else selector:
        mask[:, p % s] = True
    return mask


def _value_by_hand(vector, shape) -> torch.Tensor:
    value = torch.as_tensor(np.asarray(vector)).to(torch.float32)
    n, s, d = shape
    if value.shape == (d,):
        value = value.view(1, 1, d)
    elif value.shape == (n, d):
        value = value.view(n, 1, d)
    return value.expand(n, s, d)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_property_runs_and_matches_or_refuses_before_the_forward(tiny_llama, batch, data):
    n, s = batch.tokens.shape
    kind = data.draw(st.sampled_from(["add", "patch"]))
    valid = data.draw(st.booleans())
    selector = data.draw(_selectors(n, s, valid))
    vector = _make_vector(*data.draw(_vectors(n, s, valid)))
    scale = data.draw(st.sampled_from([1.0, -0.5, 2]))
    before, after = Capture(RESID), Capture(RESID)
    with forwards(tiny_llama) as calls:
        try:
            if kind == "add":
                item = AddVector(RESID, vector, positions=selector, strength=scale)
            else:
                item = Patch(RESID, vector, positions=selector)
            with torch.no_grad():
                run(tiny_llama, batch, before, item, after)
        except IclMechError:
            assert calls == []
            assert not valid, "a well-formed selector and vector were refused"
            event("refused before the forward")
            return
    event("ran and matched")
    assert calls == [1]
    original, changed = before.activations[RESID], after.activations[RESID]
    mask = _mask_by_hand(selector, batch)[..., None]
    value = _value_by_hand(vector, original.shape)
    if kind == "add":
        expected = original + mask * (value * scale)
    else:
        expected = torch.where(mask, value, original)
    torch.testing.assert_close(changed, expected)


def test_the_checkout_guard_sees_a_file_written_under_runs(tmp_path):
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    before = checkout_state(tmp_path)
    (tmp_path / "runs" / "demo" / "report.json").write_text("{}")
    assert changed_files(before, checkout_state(tmp_path)) == ["runs/demo/report.json"]
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "x").write_text("")
    assert changed_files(before, checkout_state(tmp_path)) == ["runs/demo/report.json"]
