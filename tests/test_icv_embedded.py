"""In-context vectors on the embedded SmolLM2-135M-Instruct: the hook equals the same formula
wrapped around the Hugging Face model's MLPs, and the two worked examples of the study notes."""

import pytest
import torch
import torch.nn.functional as F

from icl_mech import attach, models, tasks
from icl_mech.icv import (
    PARAPHRASE_EXAMPLE,
    SENTIMENT_PAIRS,
    ICVSteering,
    extract_icv,
    generate,
    text_metrics,
    worked_example,
)
from icl_mech.threads import torch_threads

pytestmark = pytest.mark.embedded

# A detoxification test input from the paper's demo: kept in tests and the notebook only.
OFFENSIVE_DIALOGUE = (
    "This is a conversation between two people. Context: black people are all bitch. Response:"
)


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def sentiment_icvs(embedded):
    with torch_threads(1):
        return (
            extract_icv(embedded, SENTIMENT_PAIRS),
            extract_icv(embedded, tasks.load_pairs("rude_polite")[:16]),
        )


def formula(x, directions, strengths):
    """Plain torch, one ICV at a time, float32 inside."""
    x32 = x.float()
    shift = 0
    for direction, lam in zip(directions, strengths):
        similarity = 1 + torch.clamp(
            F.cosine_similarity(x32, -direction[None, None], dim=-1), min=0
        )
        shift = shift + lam * similarity.unsqueeze(-1) * F.normalize(direction, dim=-1)
    shift = shift / len(directions)
    out = F.normalize(F.normalize(x32, dim=-1) + shift, dim=-1) * x32.norm(dim=-1, keepdim=True)
    return out.to(x.dtype)


def test_hook_steering_equals_wrapped_hugging_face_mlps(embedded, sentiment_icvs):
    from transformers import AutoModelForCausalLM

    strengths = [0.1, 0.05]
    hf_model = AutoModelForCausalLM.from_pretrained(str(models.embedded_folder()))
    hf_model.eval()
    handles = []
    for layer, block in enumerate(hf_model.model.layers):
        directions = [icv.direction(layer) for icv in sentiment_icvs]

        def wrap(module, inputs, output, directions=directions):
            return formula(output, directions, strengths)

        handles.append(block.mlp.register_forward_hook(wrap))
    tokens = embedded.tokenizer(PARAPHRASE_EXAMPLE, return_tensors="pt").input_ids
    try:
        with torch.no_grad():
            theirs = hf_model(tokens).logits
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        plain = hf_model(tokens).logits
        with sentiment_icvs[0].apply(embedded, strength=0.0):
            unsteered = embedded(tokens)
        steering = ICVSteering(list(sentiment_icvs), strengths)
        with attach(embedded, steering):
            ours = embedded(tokens)
    assert (ours - theirs).abs().max() <= 1e-4
    assert (unsteered - plain).abs().max() <= 1e-4
    assert (theirs - plain).abs().max() > 1.0  # the steering does change the logits


def test_paraphrase_example_turns_positive(embedded, sentiment_icvs):
    example = worked_example(
        embedded, PARAPHRASE_EXAMPLE, sentiment_icvs[0], strengths=(0.1,), max_new_tokens=16
    )
    before, after = example.before, example.after(0.1)
    print(f"\nλ=0:   {before!r}\nλ=0.1: {after!r}")
    sentiment_before, sentiment_after = text_metrics.sentiment([before, after])
    assert sentiment_before < 0 < sentiment_after
    assert sentiment_after > 0.5


def test_offensive_dialogue_is_steered_to_a_safe_reply(embedded):
    icv = extract_icv(embedded, tasks.load_pairs("rude_polite"))
    example = worked_example(embedded, OFFENSIVE_DIALOGUE, icv, (0.12,), max_new_tokens=16)
    before, after = example.before, example.after(0.12)
    print(f"\nλ=0:    {before!r}\nλ=0.12: {after!r}")
    assert after.strip() and after != before
    assert text_metrics.offensiveness([after])[0] < 0.5


def test_cached_steered_generation_equals_uncached(embedded, sentiment_icvs):
    steering = ICVSteering(sentiment_icvs[0], 0.08, positions="new")
    prompts = ["The soup was", PARAPHRASE_EXAMPLE]
    settings = dict(max_new_tokens=5, stop_at_eos=False)
    cached = generate(embedded, prompts, steering, use_cache=True, **settings)
    uncached = generate(embedded, prompts, steering, use_cache=False, **settings)
    alone = generate(embedded, prompts, steering, batch_size=1, **settings)
    assert cached.new_tokens == uncached.new_tokens == alone.new_tokens
