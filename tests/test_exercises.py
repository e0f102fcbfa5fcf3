"""The exercise checkers: a right answer passes, a wrong one fails loudly, a missing one gets a hint."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _tiny_models import tiny_models

from dalle_mini_impl import evaluate, exercises, grader, pipeline
from dalle_mini_impl.attention import build_mask
from dalle_mini_impl.bpe import ByteLevelBPE, get_stats, merge
from dalle_mini_impl.clip import contrastive_loss, expected_top1_match
from dalle_mini_impl.dvae import kl_to_uniform, logit_laplace_log_prob
from dalle_mini_impl.sampling import top_p_filter
from dalle_mini_impl.transformer import next_token_loss


def not_done(*args):
    raise NotImplementedError


@pytest.fixture(scope="module")
def models():
    return tiny_models()


# --- every checker: a right answer passes, a missing one gets a hint ---------------------------------


def update_pair_counts(word, count, pair, new_id, stats):
    get_stats(word, stats, weight=-count)  # the old word's pairs go...
    get_stats(merge(list(word), pair, new_id), stats, weight=count)  # ...the merged word's come
    return {p: c for p, c in stats.items() if c != 0}


def update_pair_counts_like_train(word, count, pair, new_id, stats):
    """Only the pairs around each merge site change: (x, a) -> (x, n) and (b, y) -> (n, y)."""
    a, b = pair
    changes = {}  # (int, int) -> int

    def add(p, delta):
        changes[p] = changes.get(p, 0) + delta

    new, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            add(pair, -count)
            if new:
                add((new[-1], a), -count)
                add((new[-1], new_id), count)
            if i + 2 < len(word):
                add((b, word[i + 2]), -count)
                add((new_id, word[i + 2]), count)
            new.append(new_id)
            i += 2
        else:
            new.append(word[i])
            i += 1
    for p, delta in changes.items():
        stats[p] = stats.get(p, 0) + delta
        if stats[p] == 0:
            del stats[p]
    return stats


def encode_piece(ids, ranks):
    while len(ids) >= 2:
        pair = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, (math.inf,))[0])  # the lowest rank present
        if pair not in ranks:
            break
        ids = merge(ids, pair, ranks[pair][1])
    return ids


def decode(ids, id_to_bytes):
    return b"".join(id_to_bytes[i] for i in ids).decode("utf-8", errors="replace")


def gumbel_max(logits, n):
    return (logits - torch.log(-torch.log(torch.rand(n, len(logits))))).argmax(-1)


def exponential_race(logits, n):
    return (-torch.log(torch.rand(n, len(logits))) / logits.exp()).argmin(-1)


def my_kl(logits):
    log_q = F.log_softmax(logits, dim=1)
    return (log_q.exp() * (log_q + math.log(logits.shape[1]))).sum(dim=1).flatten(1).sum(1)


# (checker, a right answer) for every checker that takes the answer alone, lesson by lesson
RIGHT_ANSWERS = [
    (exercises.check_update_pair_counts, update_pair_counts),
    (exercises.check_update_pair_counts, update_pair_counts_like_train),
    (exercises.check_encode_piece, encode_piece),
    (exercises.check_decode, decode),
    (exercises.check_gumbel_max, gumbel_max),
    (exercises.check_gumbel_max, exponential_race),
    (exercises.check_logit_laplace_log_prob, logit_laplace_log_prob),
    (exercises.check_kl_to_uniform, my_kl),
    (exercises.check_kl_to_uniform, kl_to_uniform),
    (exercises.check_build_mask, build_mask),
    (exercises.check_top_p_filter, top_p_filter),
    (exercises.check_next_token_loss, lambda *args: next_token_loss(*args).loss),
    (exercises.check_contrastive_loss, contrastive_loss),
    (exercises.check_expected_top1, expected_top1_match),
    (exercises.check_recall_at_k, exercises.recall_at_k),
    (exercises.check_match_rates, exercises.match_rates),
    (exercises.check_failure_counts, grader.failure_counts),
]


@pytest.mark.parametrize("check,answer", RIGHT_ANSWERS, ids=lambda x: getattr(x, "__name__", ""))
def test_checkers_accept_the_right_answers(check, answer, capsys):
    assert check(answer)
    assert capsys.readouterr().out.count("✓ correct") == 1


@pytest.mark.parametrize("check", dict.fromkeys(c for c, _ in RIGHT_ANSWERS), ids=lambda c: c.__name__)
def test_checkers_give_a_hint_before_an_attempt(check, capsys):
    assert not check(not_done)
    assert capsys.readouterr().out.count("not done yet — hint:") == 1


def test_a_count_not_given_yet_gets_a_hint(capsys):
    assert not exercises.check_merges_until_single_token(None, tokenizer=None)
    assert capsys.readouterr().out.count("not done yet — hint:") == 1


# --- lesson 1: BPE --------------------------------------------------------------------------------


def test_lesson1_checkers_reject_wrong_answers():
    def only_the_merged_pair(word, count, pair, new_id, stats):  # forgets the neighbours of each merge site
        stats[pair] -= count * (len(word) - len(merge(list(word), pair, new_id)))
        return {p: c for p, c in stats.items() if c != 0}

    def left_neighbour_from_the_old_word(word, count, pair, new_id, stats):  # wrong when merges touch: "a a a a"
        changes = {}  # (int, int) -> int
        i = 0
        while i < len(word):
            if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
                changes[pair] = changes.get(pair, 0) - count
                if i > 0:  # the bug: word[i - 1] may itself have been merged already
                    x = word[i - 1]
                    changes[(x, pair[0])] = changes.get((x, pair[0]), 0) - count
                    changes[(x, new_id)] = changes.get((x, new_id), 0) + count
                if i + 2 < len(word):
                    y = word[i + 2]
                    changes[(pair[1], y)] = changes.get((pair[1], y), 0) - count
                    changes[(new_id, y)] = changes.get((new_id, y), 0) + count
                i += 2
            else:
                i += 1
        for p, delta in changes.items():
            stats[p] = stats.get(p, 0) + delta
        return {p: c for p, c in stats.items() if c != 0}

    def keeps_zero_counts(word, count, pair, new_id, stats):
        get_stats(word, stats, weight=-count)
        return get_stats(merge(list(word), pair, new_id), stats, weight=count)

    for wrong in (only_the_merged_pair, left_neighbour_from_the_old_word):
        with pytest.raises(AssertionError, match=r"merging \(97, 97\) -> 100 in the word \(97, 97, 97, 97\)"):
            exercises.check_update_pair_counts(wrong)
    with pytest.raises(AssertionError, match="left with count 0; delete them"):
        exercises.check_update_pair_counts(keeps_zero_counts)

    def forgets_to_return(word, count, pair, new_id, stats):
        update_pair_counts_like_train(word, count, pair, new_id, stats)  # right, in place, but no `return stats`

    with pytest.raises(AssertionError, match="changed `stats` but returned None"):
        exercises.check_update_pair_counts(forgets_to_return)

    def leftmost_mergeable_pair_first(ids, ranks):  # greedy left to right, ignoring the ranks' order
        i = 0
        while i < len(ids) - 1:
            if (ids[i], ids[i + 1]) in ranks:
                ids = ids[:i] + [ranks[(ids[i], ids[i + 1])][1]] + ids[i + 2:]
                i = 0
            else:
                i += 1
        return ids

    with pytest.raises(AssertionError, match=r"for 'aaaa' .* got \[257, 64\] = \['aaa', 'a'\], "
                                             r"expected \[256, 256\] = \['aa', 'aa'\]"):
        exercises.check_encode_piece(leftmost_mergeable_pair_first)

    def token_by_token(ids, id_to_bytes):  # a character cut over two tokens becomes two U+FFFD
        return "".join(id_to_bytes[i].decode("utf-8", errors="replace") for i in ids)

    def drops_the_partial_bytes(ids, id_to_bytes):
        return b"".join(id_to_bytes[i] for i in ids).decode("utf-8", errors="ignore")

    with pytest.raises(AssertionError, match="got 'caf\ufffd\ufffd', expected 'café'"):
        exercises.check_decode(token_by_token)
    with pytest.raises(AssertionError, match="got 'caf', expected 'caf\ufffd'"):
        exercises.check_decode(drops_the_partial_bytes)


@pytest.mark.parametrize("check, names", [
    (exercises.check_encode_piece, "_encode_piece or dmi.bpe.ByteLevelBPE.encode"),
    (exercises.check_decode, "decode"),
])
def test_lesson1_answers_that_only_call_the_tokenizer_are_refused(check, names):
    tok = ByteLevelBPE.train(["a small red circle\n"], vocab_size=260)  # a tokenizer the learner already holds
    methods = {name: ByteLevelBPE.__dict__[name] for name in ("_encode_piece", "encode", "decode")}

    def calls_the_tokenizer(ids, table):
        if check is exercises.check_decode:
            return tok.decode(ids)
        return tok._encode_piece("".join(tok.id_to_token(i) for i in ids), None)

    with pytest.raises(AssertionError, match=f"calls dmi.bpe.ByteLevelBPE.{names}"):
        check(calls_the_tokenizer)
    assert {name: ByteLevelBPE.__dict__[name] for name in methods} == methods, "the checker puts the methods back"
    assert tok.decode(tok.encode("a red")) == "a red"


def test_merges_until_single_token_counts_merges():
    tok = ByteLevelBPE.train(["aaab aaab aaab"], vocab_size=256 + 10)
    k = exercises.merges_until_single_token(tok, "aaab")
    assert len(tok.encode("aaab", max_merges=k)) == 1
    assert len(tok.encode("aaab", max_merges=k - 1)) > 1
    assert exercises.check_merges_until_single_token(k, tok, "aaab")
    with pytest.raises(AssertionError):
        exercises.check_merges_until_single_token(k - 1, tok, "aaab")


# --- lesson 2: the dVAE ---------------------------------------------------------------------------


def test_lesson2_checkers_reject_wrong_answers():
    with pytest.raises(AssertionError, match="gumbel_max"):
        exercises.check_gumbel_max(lambda logits, n: logits.expand(n, -1).argmax(-1))  # no noise: always the mode
    with pytest.raises(AssertionError, match="gumbel_max"):  # the wrong sign of the noise
        exercises.check_gumbel_max(
            lambda logits, n: (logits + torch.log(-torch.log(torch.rand(n, len(logits))))).argmax(-1))
    with pytest.raises(AssertionError, match="gumbel_max"):
        exercises.check_gumbel_max(lambda logits, n: gumbel_max(logits, n // 2))
    with pytest.raises(AssertionError):  # forgot the Jacobian term -ln x - ln(1 - x)
        exercises.check_logit_laplace_log_prob(
            lambda x, mu, log_b: -math.log(2) - log_b - (torch.logit(x) - mu).abs() / log_b.exp())
    with pytest.raises(AssertionError):  # the mean over cells instead of the sum
        exercises.check_kl_to_uniform(lambda logits: my_kl(logits) / (logits.shape[2] * logits.shape[3]))
    with pytest.raises(AssertionError, match="shape"):  # per cell, not per image
        exercises.check_kl_to_uniform(lambda logits: my_kl(logits)[:, None])


# --- lesson 3: sparse attention and the transformer -----------------------------------------------


def test_lesson3_checkers_reject_wrong_answers():
    def same_row_only(kind, text_len, grid, kernel):  # the classic misreading of the row mask
        mask = build_mask(kind, text_len, grid, kernel)
        if kind == "row":
            i = torch.arange(grid * grid)
            mask[text_len:, text_len:] &= (i.view(-1, 1) // grid) == (i.view(1, -1) // grid)
        return mask

    with pytest.raises(AssertionError, match="build_mask\\('row'"):
        exercises.check_build_mask(same_row_only)

    def top_p_keeping_one_too_few(logits, p):  # drops the token that crosses p
        probs, order = logits.softmax(-1).sort(dim=-1, descending=True)
        drop = probs.cumsum(-1) > p
        return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))

    with pytest.raises(AssertionError, match="top_p_filter"):
        exercises.check_top_p_filter(top_p_keeping_one_too_few)

    def top_p_breaking_ties_the_other_way(logits, p):  # right, but among equal logits the last ones survive
        flipped = logits.flip(-1)
        probs, order = flipped.softmax(-1).sort(dim=-1, descending=True, stable=True)
        drop = probs.cumsum(-1) - probs >= p
        return flipped.masked_fill(drop.scatter(-1, order, drop), float("-inf")).flip(-1)

    tied = torch.zeros(1, 8)
    assert not torch.equal(torch.isfinite(top_p_breaking_ties_the_other_way(tied, 0.3)),
                           torch.isfinite(top_p_filter(tied, 0.3)))  # other tokens kept than the package's...
    assert exercises.check_top_p_filter(top_p_breaking_ties_the_other_way)  # ... and just as right

    def top_p_keeping_the_wrong_ones(logits, p):  # the right count, from the unlikely end
        kept = torch.isfinite(top_p_filter(logits, p)).sum(-1, keepdim=True)  # (B, 1)
        rank = logits.argsort(-1).argsort(-1)  # 0 for the least likely
        return logits.masked_fill(rank >= kept, float("-inf"))

    with pytest.raises(AssertionError, match="less likely one was kept"):
        exercises.check_top_p_filter(top_p_keeping_the_wrong_ones)

    def equal_weights(text_logits, image_logits, text, codes):  # 1 : 1 instead of 1 : 7
        return (F.cross_entropy(text_logits.flatten(0, 1), text[:, 1:].flatten())
                + F.cross_entropy(image_logits.flatten(0, 1), codes.flatten())) / 2

    with pytest.raises(AssertionError, match="expected"):
        exercises.check_next_token_loss(equal_weights)


# --- lesson 4: CLIP and reranking ------------------------------------------------------------------


def test_lesson4_checkers_reject_wrong_answers():
    def one_direction(v, t, s, positives):  # image -> text only, a classic slip
        logits = s * v @ t.T
        return torch.nn.functional.cross_entropy(logits, torch.arange(len(v)))

    def ignores_positives(v, t, s, positives):
        return contrastive_loss(v, t, s)

    for wrong in (one_direction, ignores_positives):
        with pytest.raises(AssertionError, match="expected"):
            exercises.check_contrastive_loss(wrong)

    def best_of_all(scores, matches, n):  # forgets the subsets: always CLIP's overall favourite
        return float(matches[np.argmax(scores)])

    with pytest.raises(AssertionError, match="expected"):
        exercises.check_expected_top1(best_of_all)

    def row_wise(sims, k):  # image -> text instead of text -> image
        return exercises.recall_at_k(np.asarray(sims).T, k)

    with pytest.raises(AssertionError, match="expected"):
        exercises.check_recall_at_k(row_wise)


def test_recall_at_k_known_answers():
    assert exercises.recall_at_k([[0.9, 0.6], [0.8, 0.2]], 1) == 0.5
    assert exercises.recall_at_k([[0.9, 0.6], [0.8, 0.2]], 2) == 1.0
    assert exercises.recall_at_k(np.ones((3, 3)), 1) == 0.0  # ties count against the caption
    assert exercises.recall_at_k(torch.eye(3), 1) == 1.0


# --- capstone (lesson 5): the whole pipeline, evaluated --------------------------------------------


def test_match_rates_reproduce_the_report(models):
    reports = evaluate.evaluate_splits(models, ("seen", "compositional"), n_prompts=3, candidates=2, keep=1, seed=0,
                                       progress=False)
    for report in reports.values():
        rates = exercises.match_rates(report["prompts"], report["keep"])
        for key, value in rates.items():
            assert value == pytest.approx(report["overall"][key])


def _sampled_from_parts(prompt, models, candidates, seed):
    """The exercise's first steps, from the parts: tokenize, repeat, sample at the package defaults, decode."""
    from dalle_mini_impl import defaults, sampling
    from dalle_mini_impl.transformer import encode_captions

    device = models.transformer.image_head.weight.device
    text = encode_captions(models.tokenizer, [prompt], models.transformer.config.text_len).to(device)
    images, _ = sampling.sample_images(models.transformer, models.dvae, text.repeat(candidates, 1),
                                       temperature=defaults.TEMPERATURE, condition_scale=defaults.CONDITION_SCALE,
                                       generator=torch.Generator(device=device).manual_seed(seed))
    return images


def test_check_generate_accepts_the_pipeline_rebuilt_and_hints_before_an_attempt(models, capsys):
    def my_generate(prompt, models, candidates, keep, seed):  # from the parts, as the exercise asks
        from dalle_mini_impl import clip

        images = _sampled_from_parts(prompt, models, candidates, seed)
        images, scores = clip.rerank(models.clip, models.tokenizer, prompt, images)
        return images[:keep], scores[:keep]

    def calls_the_package(prompt, models, candidates, keep, seed):
        r = pipeline.generate(prompt, models.transformer, models.dvae, models.tokenizer, candidates=candidates,
                              keep=keep, seed=seed, clip_model=models.clip)[0]
        return r.images, r.scores

    assert exercises.check_generate(my_generate, models)
    assert not exercises.check_generate(not_done, models)
    out = capsys.readouterr().out
    assert out.count("✓ correct") == 1 and out.count("not done yet — hint:") == 1
    with pytest.raises(AssertionError, match="calls dmi.pipeline.generate"):
        exercises.check_generate(calls_the_package, models)
    assert pipeline.generate.__name__ == "generate", "the checker puts generate back"


def test_capstone_checkers_reject_wrong_answers(models):
    def unranked(prompt, models, candidates, keep, seed):  # forgets to rerank
        return _sampled_from_parts(prompt, models, candidates, seed)[:keep], np.zeros(keep, np.float32)

    with pytest.raises(AssertionError, match="generate keeps|scores"):
        exercises.check_generate(unranked, models)

    def first_sample(prompts, keep):  # top-1 in sampling order instead of CLIP's order
        rates = exercises.match_rates(prompts, keep)
        rates["top1"] = float(np.mean([r["matches"][0] for r in prompts]))
        return rates

    with pytest.raises(AssertionError, match="top1"):
        exercises.check_match_rates(first_sample)

    def counts_ungradable(grades):  # counts None (not stated) as a failure
        return {name: sum(g.checks[name] is not True for g in grades) for name in grader.CHECKS}

    with pytest.raises(AssertionError, match="expected"):
        exercises.check_failure_counts(counts_ungradable)


@pytest.mark.parametrize("check, module, name", [
    (exercises.check_logit_laplace_log_prob, "dvae", "logit_laplace_log_prob"),
    (exercises.check_kl_to_uniform, "dvae", "kl_to_uniform"),
    (exercises.check_build_mask, "attention", "build_mask"),
    (exercises.check_top_p_filter, "sampling", "top_p_filter"),
    (exercises.check_next_token_loss, "transformer", "next_token_loss"),
    (exercises.check_contrastive_loss, "clip", "contrastive_loss"),
    (exercises.check_expected_top1, "clip", "expected_top1_match"),
    (exercises.check_failure_counts, "grader", "failure_counts"),
])
def test_an_answer_that_only_calls_the_package_is_refused(check, module, name):
    import importlib

    package_module = importlib.import_module(f"dalle_mini_impl.{module}")
    original = getattr(package_module, name)

    def calls_the_package(*args):
        return getattr(package_module, name)(*args)

    with pytest.raises(AssertionError, match=f"calls dmi.{module}.{name}"):
        check(calls_the_package)
    assert getattr(package_module, name) is original, "the checker puts the package function back"
