"""The DALL·E transformer: config, embeddings, causality, the 1 : 7 loss, caption helpers."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from dalle_mini_impl.transformer import (
    DalleTransformer,
    TransformerConfig,
    attention_weights,
    drop_captions,
    empty_text,
    encode_captions,
    next_token_loss,
)


def tiny(**overrides) -> TransformerConfig:
    """A model small enough to test in milliseconds, with the course's sequence layout."""
    values = dict(text_vocab_size=40, image_vocab_size=24, text_len=8, grid=4, d_model=32, n_heads=4, n_layers=4)
    return TransformerConfig(**{**values, **overrides})


def batch(config: TransformerConfig, B: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(3, config.text_vocab_size, (B, config.text_len), generator=g)
    text[:, 0] = config.bos_id
    text[0, 5:] = config.pad_id  # a short caption
    codes = torch.randint(0, config.image_vocab_size, (B, config.n_image), generator=g)
    return text, codes


class FakeTokenizer:
    """The part of the course tokenizer that encode_captions uses: one id per character."""

    specials = {"<pad>": 0, "<bos>": 1, "<eos>": 2}
    vocab_size = 3 + 26 + 1

    def encode(self, text: str) -> list[int]:
        return [29 if ch == " " else 3 + ord(ch) - ord("a") for ch in text]

    def token_to_id(self, token: str):
        return self.specials.get(token)


# --- config -----------------------------------------------------------------


def test_presets_and_their_sizes():
    cpu = DalleTransformer(TransformerConfig.preset("cpu"))
    assert 3_000_000 <= cpu.num_params() <= 4_000_000
    assert TransformerConfig() == TransformerConfig.preset("cpu")
    gpu = TransformerConfig.preset("gpu")
    assert gpu.d_model > 256 and gpu.n_layers > 4
    assert gpu.mask_kinds == ["row", "column", "row", "row", "row", "column", "row", "conv"]
    assert TransformerConfig.preset("cpu", d_model=128).d_model == 128
    with pytest.raises(ValueError, match="unknown preset"):
        TransformerConfig.preset("tpu")


def test_config_round_trips_through_a_dict_as_json_would():
    config = tiny(layer_masks=("row", "row", "conv", "causal"))
    values = config.to_dict()
    values["layer_masks"] = list(values["layer_masks"])  # what json gives back
    assert TransformerConfig.from_dict(values) == config


@pytest.mark.parametrize("bad,match", [
    (dict(d_model=30), "divisible"),
    (dict(conv_kernel=4), "odd"),
    (dict(layer_masks=("row",)), "entries"),
    (dict(layer_masks=("row", "row", "diag", "conv")), "unknown mask"),
    (dict(attention="sparse"), "attention"),
])
def test_bad_configs_fail_clearly(bad, match):
    with pytest.raises(ValueError, match=match):
        tiny(**bad)


def test_layers_use_the_scheduled_masks():
    model = DalleTransformer(tiny())
    kinds = model.config.mask_kinds
    assert kinds == ["row", "column", "row", "conv"]
    for block, kind in zip(model.blocks, kinds):
        if kind == "column":  # code 4 (row 1, col 0) sees code 0 above it but not code 3 before it
            assert block.attn.mask[8 + 4, 8 + 0] and not block.attn.mask[8 + 4, 8 + 3]


# --- embeddings ---------------------------------------------------------------


def test_each_text_position_has_its_own_pad_embedding():
    config = tiny()
    model = DalleTransformer(config)
    text = empty_text(2, config)  # [<bos>, <pad> × 7]
    e = model.embed_text(text)  # (2, Lt, d)
    Vt = config.text_vocab_size
    for i in range(1, config.text_len):
        expected = model.text_emb.weight[Vt + i] + model.text_pos.weight[i]
        torch.testing.assert_close(e[0, i], expected)
    pads = model.text_emb.weight[Vt + 1: Vt + config.text_len]  # (Lt - 1, d)
    assert torch.cdist(pads, pads).add(torch.eye(len(pads))).min() > 0, "pad vectors differ per position"


def test_image_embedding_is_code_plus_row_plus_column():
    config = tiny()
    model = DalleTransformer(config)
    codes = torch.tensor([[5, 7, 9]])
    e = model.embed_image(codes, start=3)  # codes 3, 4, 5 of a 4×4 grid: cells (0,3), (1,0), (1,1)
    for n, (j, code) in enumerate(zip([3, 4, 5], [5, 7, 9])):
        expected = model.image_emb.weight[code] + model.row_emb.weight[j // 4] + model.col_emb.weight[j % 4]
        torch.testing.assert_close(e[0, n], expected)


# --- forward ----------------------------------------------------------------------


def test_forward_shapes_full_and_partial():
    config = tiny()
    model = DalleTransformer(config)
    text, codes = batch(config)
    text_logits, image_logits = model(text, codes)
    assert text_logits.shape == (3, config.text_len - 1, config.text_vocab_size)
    assert image_logits.shape == (3, config.n_image, config.image_vocab_size)
    _, image_logits = model(text, codes[:, :5])
    assert image_logits.shape == (3, 6, config.image_vocab_size)
    _, image_logits = model(text)
    assert image_logits.shape == (3, 1, config.image_vocab_size)


def test_no_prediction_depends_on_its_target_or_later_tokens():
    config = tiny()
    model = DalleTransformer(config).eval()
    text, codes = batch(config)
    text_logits, image_logits = model(text, codes)
    j = 6  # change code j: predictions of codes 0..j must not move, later ones must
    changed = codes.clone()
    changed[:, j] = (changed[:, j] + 1) % config.image_vocab_size
    text_logits_2, image_logits_2 = model(text, changed)
    torch.testing.assert_close(image_logits_2[:, : j + 1], image_logits[:, : j + 1])
    torch.testing.assert_close(text_logits_2, text_logits)
    assert not torch.allclose(image_logits_2[:, j + 1], image_logits[:, j + 1])
    i = 4  # change text token i: text predictions of tokens 1..i must not move
    changed_text = text.clone()
    changed_text[:, i] = 3 + (changed_text[:, i] - 2) % (config.text_vocab_size - 3)
    text_logits_3, image_logits_3 = model(changed_text, codes)
    torch.testing.assert_close(text_logits_3[:, :i], text_logits[:, :i])
    assert not torch.allclose(image_logits_3, image_logits)  # every image token reads the caption


def test_dense_and_flex_models_agree():
    pytest.importorskip("torch.nn.attention.flex_attention")
    dense = DalleTransformer(tiny(attention="dense")).eval()
    flex = DalleTransformer(tiny(attention="flex")).eval()
    flex.load_state_dict(dense.state_dict())
    text, codes = batch(dense.config)
    with torch.no_grad():  # flex attention is forward-only on CPU
        for a, b in zip(flex(text, codes), dense(text, codes)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_bad_inputs_fail_with_the_fix():
    config = tiny()
    model = DalleTransformer(config)
    text, codes = batch(config)
    with pytest.raises(ValueError, match="encode_captions"):
        model(text[:, :5], codes)
    with pytest.raises(ValueError, match="flatten"):
        model(text, codes.view(3, 4, 4))
    with pytest.raises(ValueError, match="tokenizer.vocab_size"):
        model(text + 100, codes)
    with pytest.raises(ValueError, match="image codes"):
        model(text, codes + 100)
    with pytest.raises(ValueError, match="full grid"):
        model.loss(text, codes[:, :10])


# --- attention maps ---------------------------------------------------------------


def test_attention_weights_are_the_layers_own_probabilities():
    torch.manual_seed(0)
    config = tiny()
    model = DalleTransformer(config).eval()
    text, codes = batch(config, B=2)
    maps = model.attention_maps(text, codes)
    S = config.seq_len
    assert len(maps) == config.n_layers
    for block, A in zip(model.blocks, maps):
        assert A.shape == (2, config.n_heads, S, S)
        torch.testing.assert_close(A.sum(-1), torch.ones(2, config.n_heads, S))
        assert (A[:, :, ~block.attn.mask] == 0).all(), "no weight outside the mask"
    # the weights reproduce the layer's output: proj(A V) == attn(x)
    block = model.blocks[1]
    x = block.ln_1(torch.randn(2, S - 1, config.d_model))
    A = attention_weights(block.attn, x)  # (B, nh, T, T)
    d, nh = config.d_model, config.n_heads
    v = block.attn.qkv(x).split(d, dim=2)[2].view(2, S - 1, nh, d // nh).transpose(1, 2)  # (B, nh, T, hs)
    y = block.attn.proj((A @ v).transpose(1, 2).reshape(2, S - 1, d))
    with torch.no_grad():
        torch.testing.assert_close(y, block.attn(x), atol=1e-5, rtol=1e-4)


def test_attention_maps_match_the_forward_pass_for_a_partial_grid():
    torch.manual_seed(0)
    config = tiny(layer_masks=("row", "column", "conv", "causal"))
    model = DalleTransformer(config).eval()
    text, _ = batch(config, B=1)
    maps = model.attention_maps(text, torch.tensor([[3, 4, 5]]))
    assert maps[0].shape == (1, 4, 8 + 3, 8 + 3)
    assert model.attention_maps(text)[0].shape == (1, 4, 8, 8)


# --- the loss ---------------------------------------------------------------------


def test_loss_is_one_eighth_text_plus_seven_eighths_image_each_per_token():
    config = tiny()
    model = DalleTransformer(config)
    text, codes = batch(config)
    out = model.loss(text, codes.view(3, 4, 4))  # a grid is flattened
    text_logits, image_logits = model(text, codes)
    ce_text = F.cross_entropy(text_logits.reshape(-1, config.text_vocab_size), text[:, 1:].reshape(-1),
                              reduction="sum") / text[:, 1:].numel()
    ce_image = F.cross_entropy(image_logits.reshape(-1, config.image_vocab_size), codes.reshape(-1),
                               reduction="sum") / codes.numel()
    torch.testing.assert_close(out.text_loss, ce_text)
    torch.testing.assert_close(out.image_loss, ce_image)
    torch.testing.assert_close(out.loss, ce_text / 8 + 7 * ce_image / 8)


def test_uniform_logits_give_the_known_loss():
    config = tiny()
    model = DalleTransformer(config)
    for head in (model.text_head, model.image_head):
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    out = model.loss(*batch(config))
    assert out.text_loss.item() == pytest.approx(math.log(config.text_vocab_size))
    assert out.image_loss.item() == pytest.approx(math.log(config.image_vocab_size))
    expected = math.log(config.text_vocab_size) / 8 + 7 * math.log(config.image_vocab_size) / 8
    assert out.loss.item() == pytest.approx(expected)


def test_a_few_steps_fit_one_batch():
    torch.manual_seed(0)
    config = tiny()
    model = DalleTransformer(config)
    text, codes = batch(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = model.loss(text, codes).loss.item()
    for _ in range(30):
        out = model.loss(text, codes)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert out.loss.item() < 0.7 * first


def test_next_token_loss_weight_is_a_parameter():
    text_logits, image_logits = torch.zeros(2, 3, 5), torch.zeros(2, 4, 7)
    text, codes = torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long)
    out = next_token_loss(text_logits, image_logits, text, codes, text_weight=0.5)
    assert out.loss.item() == pytest.approx((math.log(5) + math.log(7)) / 2)


# --- captions ---------------------------------------------------------------------


def test_encode_captions_adds_bos_and_pads():
    ids = encode_captions(FakeTokenizer(), ["ab", "c a"], text_len=6)
    assert ids.dtype == torch.long
    assert ids.tolist() == [[1, 3, 4, 0, 0, 0], [1, 5, 29, 3, 0, 0]]
    assert encode_captions(FakeTokenizer(), "ab", text_len=4).tolist() == [[1, 3, 4, 0]]
    assert encode_captions(FakeTokenizer(), "", text_len=3).tolist() == [[1, 0, 0]]  # = the empty caption


def test_encode_captions_truncates_with_a_warning():
    with pytest.warns(UserWarning, match="truncated"):
        ids = encode_captions(FakeTokenizer(), ["abcdefgh", "ab"], text_len=4)
    assert ids.tolist() == [[1, 3, 4, 5], [1, 3, 4, 0]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encode_captions(FakeTokenizer(), ["abc"], text_len=4)  # exactly fits: no warning


def test_encode_captions_needs_the_special_tokens():
    class NoSpecials(FakeTokenizer):
        def token_to_id(self, token):
            return None

    with pytest.raises(ValueError, match="special tokens"):
        encode_captions(NoSpecials(), ["ab"])


def test_drop_captions():
    config = tiny()
    text, _ = batch(config, B=4000)
    before = text.clone()
    g = torch.Generator().manual_seed(0)
    dropped = drop_captions(text, config, generator=g)
    assert torch.equal(text, before), "the input is not modified"
    empty = empty_text(1, config)[0]
    is_empty = (dropped == empty).all(dim=1)
    assert 0.17 < is_empty.float().mean().item() < 0.23  # p = 0.2
    assert torch.equal(dropped[~is_empty], text[~is_empty])
    assert torch.equal(drop_captions(text, config, p=0.0), text)
    assert (drop_captions(text, config, p=1.0) == empty).all()
