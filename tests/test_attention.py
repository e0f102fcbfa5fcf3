"""DALL·E's attention masks: every entry follows its rule, nothing sees the future.

The rules are restated here independently of ``attention.py``, as a plain
double loop over (query, key) positions of ``[text | image codes]``.
"""

import pytest
import torch

from dalle_mini_impl.attention import (
    KEY_ALLOWED,
    KEY_FUTURE,
    MASK_KINDS,
    KVCache,
    MaskedSelfAttention,
    build_mask,
    image_rule,
    key_states,
    keys_per_query,
    layer_mask_kinds,
)

# (text_len, grid, conv kernel): the paper's Fig. 11 example (6 text tokens, a 4×4 grid), and the course's size
SIZES = [(6, 4, 3), (32, 8, 5), (32, 8, 3), (6, 4, 5)]


def rule(kind: str, q: int, k: int, text_len: int, grid: int, kernel: int) -> bool:
    """May query position q attend key position k? Written from the module docstring's prose."""
    if k > q:  # nobody sees the future
        return False
    if q < text_len:  # a text query: the text up to itself
        return True
    if k < text_len:  # an image query: the whole caption
        return True
    i, j = q - text_len, k - text_len  # the codes the two positions hold
    (row_i, col_i), (row_j, col_j) = divmod(i, grid), divmod(j, grid)
    if kind == "row":  # itself and the previous `grid` codes in raster order
        return i - grid <= j
    if kind == "column":  # itself and the codes above it in its column
        return col_j == col_i
    if kind == "conv":  # the causal part of a kernel × kernel square around it, clipped at the borders
        half = kernel // 2
        return abs(row_i - row_j) <= half and abs(col_i - col_j) <= half
    if kind == "causal":
        return True
    raise AssertionError(kind)


@pytest.mark.parametrize("text_len,grid,kernel", SIZES)
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_every_entry_follows_its_rule(kind, text_len, grid, kernel):
    mask = build_mask(kind, text_len, grid, kernel)
    size = text_len + grid * grid
    assert mask.shape == (size, size) and mask.dtype == torch.bool
    entries = mask.tolist()
    for q in range(size):
        for k in range(size):
            assert entries[q][k] == rule(kind, q, k, text_len, grid, kernel), (kind, q, k)


@pytest.mark.parametrize("text_len,grid,kernel", SIZES)
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_no_mask_sees_the_future_and_every_image_query_sees_all_text(kind, text_len, grid, kernel):
    mask = build_mask(kind, text_len, grid, kernel)
    future = torch.ones_like(mask).triu(diagonal=1)
    assert not (mask & future).any()
    assert mask.diagonal().all(), "every position attends itself"
    assert mask[text_len:, :text_len].all()
    assert not mask[:text_len, text_len:].any()


def conv_count(r: int, c: int, grid: int, kernel: int) -> int:
    """Image keys of a conv query at cell (r, c): full rows above within reach, then the left part of its row."""
    half = kernel // 2
    width = min(c + half, grid - 1) - max(c - half, 0) + 1
    return min(r, half) * width + (c - max(c - half, 0)) + 1


@pytest.mark.parametrize("text_len,grid,kernel", SIZES)
def test_keys_per_query(text_len, grid, kernel):
    text_counts = list(range(1, text_len + 1))
    for kind in MASK_KINDS:
        counts = keys_per_query(build_mask(kind, text_len, grid, kernel)).tolist()
        assert counts[:text_len] == text_counts
        for i in range(grid * grid):
            r, c = divmod(i, grid)
            expected = {
                "row": min(i, grid) + 1,
                "column": r + 1,
                "conv": conv_count(r, c, grid, kernel),
                "causal": i + 1,
            }[kind]
            assert counts[text_len + i] == text_len + expected, (kind, i)
    # the numbers the lesson quotes, on 8×8: a row window of 9 codes, an interior 5×5 conv sees 13
    if (grid, kernel) == (8, 5):
        conv = keys_per_query(build_mask("conv", text_len, grid, kernel)) - text_len
        row = keys_per_query(build_mask("row", text_len, grid, kernel)) - text_len
        assert conv[text_len + 3 * 8 + 4].item() == 13 and row[text_len + 3 * 8 + 4].item() == 9
        assert conv[text_len + 0].item() == 1 and conv[text_len + 8].item() == 4  # clipped at the left border


def picture(block: torch.Tensor) -> list[str]:
    return ["".join("x" if v else "." for v in row) for row in block.tolist()]


def test_the_papers_four_by_four_example_drawn():
    """The image-to-image blocks of Fig. 11's example (6 text tokens, 4×4 grid), drawn as text."""
    text_len, grid = 6, 4
    row = build_mask("row", text_len, grid)[text_len:, text_len:]
    column = build_mask("column", text_len, grid)[text_len:, text_len:]
    conv = build_mask("conv", text_len, grid, kernel=3)[text_len:, text_len:]
    assert picture(row) == [
        "x...............",
        "xx..............",
        "xxx.............",
        "xxxx............",
        "xxxxx...........",
        ".xxxxx..........",
        "..xxxxx.........",
        "...xxxxx........",
        "....xxxxx.......",
        ".....xxxxx......",
        "......xxxxx.....",
        ".......xxxxx....",
        "........xxxxx...",
        ".........xxxxx..",
        "..........xxxxx.",
        "...........xxxxx",
    ]
    assert picture(column) == [
        "x...............",
        ".x..............",
        "..x.............",
        "...x............",
        "x...x...........",
        ".x...x..........",
        "..x...x.........",
        "...x...x........",
        "x...x...x.......",
        ".x...x...x......",
        "..x...x...x.....",
        "...x...x...x....",
        "x...x...x...x...",
        ".x...x...x...x..",
        "..x...x...x...x.",
        "...x...x...x...x",
    ]
    assert picture(conv) == [
        "x...............",
        "xx..............",
        ".xx.............",
        "..xx............",
        "xx..x...........",
        "xxx.xx..........",
        ".xxx.xx.........",
        "..xx..xx........",
        "....xx..x.......",
        "....xxx.xx......",
        ".....xxx.xx.....",
        "......xx..xx....",
        "........xx..x...",
        "........xxx.xx..",
        ".........xxx.xx.",
        "..........xx..xx",
    ]


def test_key_states_follow_the_mask():
    text, image = key_states("row", 6 + 5, 6, 4)
    assert (text == KEY_ALLOWED).all()
    assert image.tolist() == [[0, 1, 1, 1], [1, 2, 3, 3], [3, 3, 3, 3], [3, 3, 3, 3]]
    text, image = key_states("column", 2, 6, 4)  # a text query
    assert text.tolist() == [1, 1, 2, 3, 3, 3] and (image == KEY_FUTURE).all()
    with pytest.raises(ValueError, match="query must be a position"):
        key_states("row", 22, 6, 4)


def test_layer_schedule_follows_the_paper():
    assert layer_mask_kinds(1) == ["conv"]
    assert layer_mask_kinds(4) == ["row", "column", "row", "conv"]
    assert layer_mask_kinds(8) == ["row", "column", "row", "row", "row", "column", "row", "conv"]
    kinds = layer_mask_kinds(64)  # the paper's 64 layers
    assert kinds[-1] == "conv" and kinds.count("column") == 16
    assert all(kinds[i - 1] == "column" for i in range(2, 64, 4))
    with pytest.raises(ValueError, match="at least 1"):
        layer_mask_kinds(0)


def test_bad_mask_arguments_fail_clearly():
    with pytest.raises(ValueError, match="unknown mask kind"):
        image_rule("diagonal", 4)
    with pytest.raises(ValueError, match="odd"):
        image_rule("conv", 4, kernel=4)


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_attention_output_depends_on_exactly_the_allowed_keys(kind):
    """One layer: the gradient of output q w.r.t. input k is non-zero iff mask[q, k]."""
    torch.manual_seed(0)
    text_len, grid = 6, 4
    mask = build_mask(kind, text_len, grid, kernel=3)
    layer = MaskedSelfAttention(d_model=16, n_heads=2, mask=mask, backend="dense")
    size = text_len + grid * grid
    x = torch.randn(1, size, 16, requires_grad=True)
    y = layer(x)  # (1, S, 16)
    for q in [0, text_len - 1, text_len, text_len + 5, size - 1]:
        (grad,) = torch.autograd.grad(y[0, q].sum(), x, retain_graph=True)
        depends = grad[0].abs().sum(dim=-1) > 0  # (S,)
        assert torch.equal(depends, mask[q]), (kind, q)


def test_cached_rows_equal_the_full_layer():
    torch.manual_seed(0)
    mask = build_mask("conv", 6, 4, kernel=3)
    layer = MaskedSelfAttention(d_model=16, n_heads=4, mask=mask, backend="dense")
    x = torch.randn(2, 22, 16)
    full = layer(x)
    cache = KVCache(batch=2, n_heads=4, max_len=22, head_size=4)
    parts = [layer(x[:, :6], cache)] + [layer(x[:, t:t + 1], cache) for t in range(6, 22)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="KV cache holds 22"):
        layer(x[:, :1], cache)


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_flex_attention_equals_dense(kind):
    """The block-sparse flex path (eager on CPU; compiled on a GPU) computes the dense result."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    torch.manual_seed(0)
    mask = build_mask(kind, 32, 8, kernel=5)
    dense = MaskedSelfAttention(d_model=32, n_heads=4, mask=mask, backend="dense")
    flex = MaskedSelfAttention(d_model=32, n_heads=4, mask=mask, backend="flex")
    flex.load_state_dict(dense.state_dict())
    x = torch.randn(2, 95, 32)
    with torch.no_grad():  # flex attention has no backward on CPU (torch 2.13); on a GPU it has
        torch.testing.assert_close(flex(x), dense(x), atol=1e-5, rtol=1e-4)


def test_attention_rejects_bad_arguments():
    mask = build_mask("row", 6, 4)
    with pytest.raises(ValueError, match="divisible"):
        MaskedSelfAttention(d_model=10, n_heads=3, mask=mask)
    with pytest.raises(ValueError, match="backend"):
        MaskedSelfAttention(d_model=16, n_heads=2, mask=mask, backend="sparse")


def test_bf16_on_cpu_runs_the_attention_op_in_fp32(monkeypatch):
    """Under bf16 autocast on a CPU, the masked softmax runs in fp32 (fast to differentiate there),
    the layer still returns bf16, and it computes what the fp32 layer computes to bf16 precision."""
    import dalle_mini_impl.attention as attention

    seen = []  # the dtype of q each call of the attention op gets
    sdpa = attention.F.scaled_dot_product_attention

    def spy(q, *args, **kwargs):
        seen.append(q.dtype)
        return sdpa(q, *args, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", spy)
    torch.manual_seed(0)
    mask = build_mask("row", 32, 8, kernel=5)
    layer = MaskedSelfAttention(d_model=32, n_heads=4, mask=mask, backend="dense")
    x = torch.randn(2, 96, 32)
    reference = layer(x)
    x16 = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x16)
    assert y.dtype == torch.bfloat16 and seen == [torch.float32, torch.float32]
    torch.testing.assert_close(y.float(), reference, atol=0.05, rtol=0.05)
    y.float().sum().backward()
    assert x16.grad is not None and torch.isfinite(x16.grad).all() and x16.grad.abs().sum() > 0


def test_auto_falls_back_to_dense_once_when_flex_cannot_run(monkeypatch):
    from dalle_mini_impl import attention

    torch.manual_seed(0)
    mask = attention.build_mask("row", text_len=4, grid=2)
    layer = attention.MaskedSelfAttention(16, 2, mask, backend="auto").eval()
    x = torch.randn(2, mask.shape[0], 16)
    dense = attention.MaskedSelfAttention(16, 2, mask, backend="dense").eval()
    dense.load_state_dict(layer.state_dict())
    calls = []

    def broken(*args):
        calls.append(1)
        raise RuntimeError("no Triton for this GPU")

    monkeypatch.setattr(attention, "_flex_failed", False)
    monkeypatch.setattr(attention, "FLEX_AVAILABLE", True)
    monkeypatch.setattr(attention, "_flex_attention", broken)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))  # as on a GPU
    monkeypatch.setattr(attention.MaskedSelfAttention, "block_mask", lambda self, T, device: None)
    with pytest.warns(UserWarning, match="flex attention cannot run"):
        y = layer(x)
    y_again = layer(x)  # no second attempt, no second warning
    assert calls == [1]
    monkeypatch.undo()
    assert torch.allclose(y, dense(x), atol=1e-6) and torch.allclose(y_again, y)
    forced = attention.MaskedSelfAttention(16, 2, mask, backend="flex")
    monkeypatch.setattr(attention, "_flex_attention", broken)
    monkeypatch.setattr(attention.MaskedSelfAttention, "block_mask", lambda self, T, device: None)
    with pytest.raises(RuntimeError, match="no Triton"):  # asked for by name: the error is not hidden
        forced(x)
