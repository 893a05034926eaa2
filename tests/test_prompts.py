import pytest
import torch

from icl_mech import Demonstration, IclMechError, ICLPrompt, PromptBatch, Task, run, tasks
from icl_mech.evaluation import build_prompts

MULTI_TOKEN = Task(
    "multi",
    tuple(
        Demonstration(f"example number {i}", lab)
        for i, lab in enumerate(["thoroughly delightful", "utterly dreadful"] * 6)
    ),
    template="Review: {x}\nVerdict:",
    classes=("thoroughly delightful", "utterly dreadful"),
)


def _prompts(task, n=5, shots=1, seed=0):
    return build_prompts(task, shots, task.examples[:n], seed)


def _label_words_decode(model, task):
    prompts = _prompts(task)
    batch = PromptBatch.from_prompts(model, prompts)
    for b, row in enumerate(batch.rows):
        labels = [s.text.strip() for s in prompts[b].segments if s.role == "label"]
        assert len(row.labels) == len(labels) > 0
        for positions, word in zip(row.labels, labels):
            assert model.tokenizer.decode(batch.tokens[b, positions]).strip() == word
        assert row.target == batch.seq_len - 1
        assert batch.roles[b, row.query].ne(0).all()


@pytest.mark.parametrize("name", ["sentiment", "question_type", "country_capital"])
def test_label_positions_decode_to_label_words(tiny, name):
    _label_words_decode(tiny, tasks.load(name))


def test_multi_token_label_words(tiny):
    _label_words_decode(tiny, MULTI_TOKEN)
    batch = PromptBatch.from_prompts(tiny, _prompts(MULTI_TOKEN))
    assert all(len(p) > 1 for row in batch.rows for p in row.labels)
    assert batch.label_mask(first_token_only=True).sum() < batch.label_mask().sum()


@pytest.mark.embedded
def test_label_positions_on_embedded(embedded):
    for name in tasks.names("classification"):
        _label_words_decode(embedded, tasks.load(name))
    _label_words_decode(embedded, MULTI_TOKEN)


def _padding_invariance(model, task, tol):
    prompts = _prompts(task, n=4, shots=2 if not task.is_classification else 1, seed=3)
    batch = PromptBatch.from_prompts(model, prompts)
    assert batch.attention_mask.eq(0).any(), "the test needs rows of different lengths"
    with torch.no_grad():
        together = run(model, batch)
        for b, prompt in enumerate(prompts):
            alone = PromptBatch.from_prompts(model, [prompt])
            single = run(model, alone)
            n = alone.seq_len
            torch.testing.assert_close(together[b, -n:], single[0], atol=tol, rtol=0)


@pytest.mark.parametrize("name", ["sentiment", "antonym"])
def test_padding_changes_nothing(tiny, name):
    _padding_invariance(tiny, tasks.load(name), 1e-5)


@pytest.mark.embedded
def test_padding_changes_nothing_on_embedded(embedded):
    _padding_invariance(embedded, tasks.load("topic"), 1e-4)


def test_prepend_bos_follows_model(tiny):
    batch = PromptBatch.from_prompts(tiny, _prompts(tasks.load("sentiment"), n=2))
    first_real = batch.attention_mask.argmax(dim=1)
    has_bos = batch.tokens[torch.arange(2), first_real].eq(tiny.tokenizer.bos_token_id).all()
    assert bool(has_bos) == bool(tiny.cfg.default_prepend_bos)


def test_class_logits_use_first_label_token(tiny_llama):
    batch = PromptBatch.from_prompts(tiny_llama, _prompts(MULTI_TOKEN, n=2))
    logits = torch.randn(2, batch.seq_len, tiny_llama.cfg.d_vocab)
    first = [
        tiny_llama.tokenizer.encode(" " + w, add_special_tokens=False)[0]
        for w in MULTI_TOKEN.classes
    ]
    torch.testing.assert_close(batch.class_logits(logits), logits[:, -1][:, first])


def test_empty_demonstrations_is_an_error():
    task = tasks.load("sentiment")
    with pytest.raises(IclMechError, match="empty demonstrations"):
        ICLPrompt.build(task, [], task.examples[0])


def test_label_not_among_classes_is_an_error():
    task = tasks.load("sentiment")
    with pytest.raises(IclMechError, match="not one of its classes"):
        ICLPrompt.build(task, [Demonstration("fine", "neutral")], task.examples[0])


def test_shared_first_token_is_an_error(tiny):
    task = Task(
        "shared",
        (Demonstration("a", "thumbs up"), Demonstration("b", "thumbs down")),
        template="Q: {x}\nA:",
        classes=("thumbs up", "thumbs down"),
    )
    with pytest.raises(IclMechError, match="share their first token"):
        PromptBatch.from_prompts(tiny, [ICLPrompt.build(task, task.examples[:1], "c")])


def test_label_word_outside_vocabulary_is_an_error(tiny):
    task = Task(
        "blank",
        (Demonstration("a", " "), Demonstration("b", "yes")),
        template="Q: {x}\nA:",
        classes=(" ", "yes"),
    )
    with pytest.raises(IclMechError, match="vocabulary"):
        PromptBatch.from_prompts(tiny, [ICLPrompt.build(task, task.examples[1:], "c")])


def test_label_merging_with_its_neighbour_is_an_error(tiny):
    task = Task(
        "glued",
        (Demonstration("a", "positive"), Demonstration("b", "negative")),
        template="Q: {x}\nA:",
        classes=("positive", "negative"),
        answer_prefix="x",
    )
    with pytest.raises(IclMechError, match="label word"):
        PromptBatch.from_prompts(tiny, [ICLPrompt.build(task, task.examples[:1], "c")])


def test_prompt_longer_than_context_is_an_error(tiny):
    task = tasks.load("sentiment")
    long_query = " ".join(["wonderful"] * (tiny.cfg.n_ctx + 10))
    with pytest.raises(IclMechError, match="longer than the context"):
        PromptBatch.from_prompts(tiny, [ICLPrompt.zero_shot(task, long_query)])


def test_template_must_hold_x_once():
    with pytest.raises(IclMechError, match="template"):
        Task("bad", (), template="no slot")
