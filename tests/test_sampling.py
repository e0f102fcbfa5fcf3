"""Sampling: the KV cache computes what the full forward computes, for every mask; the knobs do what they say."""

import pytest
import torch

from dalle_mini_impl.sampling import (
    cached_image_logits,
    guided_logits,
    partial_grids,
    pick_next,
    sample,
    sample_reference,
    top_k_filter,
    top_p_filter,
)
from dalle_mini_impl.transformer import DalleTransformer, TransformerConfig, empty_text


def tiny_model(seed: int = 0, **overrides) -> DalleTransformer:
    """A small model whose logits are far from uniform, so that sampling choices mean something."""
    torch.manual_seed(seed)
    values = dict(text_vocab_size=40, image_vocab_size=24, text_len=8, grid=4, d_model=32, n_heads=4, n_layers=4)
    model = DalleTransformer(TransformerConfig(**{**values, **overrides})).eval()
    with torch.no_grad():
        model.image_head.weight.mul_(40.0)  # sharpen the random model's predictions
    return model


def captions(model: DalleTransformer, B: int = 3, seed: int = 1) -> torch.Tensor:
    config = model.config
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(3, config.text_vocab_size, (B, config.text_len), generator=g)
    text[:, 0] = config.bos_id
    text[-1, 4:] = config.pad_id
    return text


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- the KV cache -------------------------------------------------------------------


LAYOUTS = [("row", "row"), ("column", "column"), ("conv", "conv"), ("causal", "causal"), None]


@pytest.mark.parametrize("layer_masks", LAYOUTS, ids=["row", "column", "conv", "causal", "paper"])
@pytest.mark.parametrize("size", [dict(text_len=8, grid=4, conv_kernel=3), dict(text_len=32, grid=8)],
                         ids=["4x4", "8x8"])
def test_cached_logits_equal_the_full_forward(layer_masks, size):
    n_layers = 4 if layer_masks is None else len(layer_masks)
    model = tiny_model(layer_masks=layer_masks, n_layers=n_layers, **size)
    text = captions(model)
    codes = torch.randint(0, model.config.image_vocab_size, (3, model.config.n_image), generator=seeded(2))
    with torch.no_grad():
        _, full = model(text, codes)  # (B, N, Vi)
    cached = cached_image_logits(model, text, codes)
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=1e-5)


KNOBS = [dict(), dict(top_k=5), dict(top_p=0.8), dict(temperature=0.7, top_k=8, top_p=0.9),
         dict(condition_scale=3.0), dict(condition_scale=0.0, top_k=4)]


@pytest.mark.parametrize("knobs", KNOBS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "plain")
def test_same_seed_same_codes_with_and_without_the_cache(knobs):
    model = tiny_model()
    text = captions(model)
    fast = sample(model, text, generator=seeded(7), **knobs)
    slow = sample_reference(model, text, generator=seeded(7), **knobs)
    assert fast.shape == (3, 4, 4) and fast.dtype == torch.long
    assert torch.equal(fast, slow)
    assert 0 <= fast.min() and fast.max() < model.config.image_vocab_size


def test_seeds_repeat_and_differ():
    model = tiny_model()
    text = captions(model, B=4)
    a = sample(model, text, generator=seeded(3))
    assert torch.equal(a, sample(model, text, generator=seeded(3)))
    assert not torch.equal(a, sample(model, text, generator=seeded(4)))


def test_rows_of_a_batch_are_independent_of_each_other():
    """Each caption's samples use its own logits: the batch is not mixed (the per-row logits are)."""
    model = tiny_model()
    text = captions(model, B=3)
    codes = sample(model, text, top_k=1)  # greedy: no randomness, so rows can be compared one by one
    for b in range(3):
        assert torch.equal(sample(model, text[b:b + 1], top_k=1), codes[b:b + 1])


# --- the knobs ----------------------------------------------------------------------


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.randn(5, 50, generator=seeded(0))
    for k in (1, 3, 17, 50, 80):
        kept = top_k_filter(logits, k).isfinite()
        expected = torch.zeros_like(kept)
        for b in range(5):
            order = sorted(range(50), key=lambda v: -logits[b, v].item())
            expected[b, order[: min(k, 50)]] = True
        assert torch.equal(kept, expected), k
    filtered = top_k_filter(logits, 3)
    assert torch.equal(filtered[filtered.isfinite()], logits[filtered.isfinite()]), "survivors keep their value"
    with pytest.raises(ValueError, match="top_k"):
        top_k_filter(logits, 0)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.1, 0.6, 0.3]])
    logits = probs.log()
    assert top_p_filter(logits, 0.7).isfinite().tolist() == [[False, True, True]]
    assert top_p_filter(logits, 0.6).isfinite().tolist() == [[False, True, False]]  # 0.6 alone reaches 0.6
    assert top_p_filter(logits, 0.5).isfinite().tolist() == [[False, True, False]]
    assert top_p_filter(logits, 0.95).isfinite().tolist() == [[True, True, True]]
    assert top_p_filter(logits, 1.0).isfinite().tolist() == [[True, True, True]]
    logits = torch.randn(20, 30, generator=seeded(1))
    for p in (0.05, 0.3, 0.9):
        kept = top_p_filter(logits, p).isfinite()
        probs = logits.softmax(-1)
        for b in range(20):
            mass = probs[b][kept[b]]
            assert mass.sum() >= p - 1e-6  # enough mass…
            assert mass.sum() - mass.min() < p  # …and no token to spare
            dropped = probs[b][~kept[b]]
            assert dropped.numel() == 0 or dropped.max() <= mass.min()  # the kept ones are the most likely
    with pytest.raises(ValueError, match="top_p"):
        top_p_filter(logits, 0.0)


def test_draws_stay_inside_the_filtered_set():
    logits = torch.randn(1, 40, generator=seeded(2)).expand(2000, 40)
    top5 = set(logits[0].topk(5).indices.tolist())
    draws = pick_next(logits, top_k=5, generator=seeded(3))  # (2000, 1)
    assert set(draws.flatten().tolist()) == top5
    greedy = pick_next(logits[:3], temperature=1.0, top_k=1)
    assert greedy.flatten().tolist() == [logits[0].argmax().item()] * 3


def test_condition_scale_one_is_plain_conditional_sampling():
    cond, uncond = torch.randn(4, 24), torch.randn(4, 24)
    torch.testing.assert_close(guided_logits(cond, uncond, 1.0), cond)
    torch.testing.assert_close(guided_logits(cond, uncond, 0.0), uncond)
    model = tiny_model()
    text = captions(model)
    plain = sample(model, text, generator=seeded(5))
    assert torch.equal(sample(model, text, condition_scale=1.0, generator=seeded(5)), plain)
    # the guided path (a batch of conditional and unconditional rows) at a scale of 1 draws the same codes
    assert torch.equal(sample(model, text, condition_scale=1.0 + 1e-7, generator=seeded(5)), plain)
    assert torch.equal(sample_reference(model, text, condition_scale=1.0 + 1e-7, generator=seeded(5)), plain)


def test_condition_scale_mixes_conditional_and_unconditional_logits():
    """Greedy guided sampling equals a loop written here from two separate full forwards."""
    model = tiny_model()
    text = captions(model, B=2)
    scale = 3.0
    codes = text.new_zeros(2, 0)
    empty = empty_text(2, model.config)
    with torch.no_grad():
        for _ in range(model.config.n_image):
            cond = model(text, codes)[1][:, -1]
            uncond = model(empty, codes)[1][:, -1]
            codes = torch.cat([codes, (uncond + scale * (cond - uncond)).argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(sample(model, text, condition_scale=scale, top_k=1).flatten(1), codes)


def test_the_prompt_tensor_and_the_model_mode_are_left_alone():
    model = tiny_model(dropout=0.1)
    model.train()
    text = captions(model)
    before = text.clone()
    for sampler in (sample, sample_reference):
        a = sampler(model, text, condition_scale=2.0, top_p=0.9, generator=seeded(0))
        b = sampler(model, text, condition_scale=2.0, top_p=0.9, generator=seeded(0))
        assert torch.equal(a, b), "dropout is off while sampling"
        assert torch.equal(text, before)
        assert model.training
    assert torch.equal(cached_image_logits(model, text, torch.zeros(3, 16, dtype=torch.long)),
                       cached_image_logits(model, text, torch.zeros(3, 16, dtype=torch.long)))
    assert torch.equal(text, before) and model.training


def test_bad_knobs_fail_clearly():
    model = tiny_model()
    text = captions(model)
    with pytest.raises(ValueError, match="top_k=1"):
        sample(model, text, temperature=0.0)
    with pytest.raises(ValueError, match="encode_captions"):
        sample(model, text[:, :3])
    with pytest.raises(ValueError, match="top_p"):
        sample(model, text, top_p=1.5)


# --- watching the grid fill ------------------------------------------------------------


def test_the_callback_sees_every_prefix_and_changes_nothing():
    model = tiny_model()
    text = captions(model, B=3)
    seen = []
    codes = sample(model, text, generator=seeded(0), condition_scale=2.0,
                   callback=lambda j, prefix: seen.append((j, prefix)))
    plain = sample(model, text, generator=seeded(0), condition_scale=2.0)
    assert torch.equal(codes, plain)
    N = model.config.n_image
    assert [j for j, _ in seen] == list(range(N))
    for j, prefix in seen:
        assert prefix.shape == (3, j + 1)
        assert torch.equal(prefix, codes.flatten(1)[:, :j + 1])


def test_partial_grids_fill_the_cells_not_drawn_yet():
    grids = partial_grids([torch.tensor([5]), torch.tensor([5, 6, 7])], grid=2, fill_code=0)
    assert grids.tolist() == [[[5, 0], [0, 0]], [[5, 6], [7, 0]]]
