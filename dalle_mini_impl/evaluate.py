"""Measuring what the models draw and read, with the exact grader: the whole pipeline (lesson 5), and each model.

Scope. The capstone's fidelity measurement, in the spirit of Ramesh et al.
2021 (§3.2, Fig. 6: more candidates, reranked by CLIP, give better images),
with the exact Shapes grader in place of human judges. For each of
``n_prompts`` held-out captions::

    caption ─▶ sample N candidates ─▶ grade every one with grader.grade
            ─▶ score every one with CLIP against the caption ─▶ rank, best first

and three numbers per caption, averaged over the captions:

* ``random``: the mean match over all N candidates, i.e. what one sample
  without reranking shows on average;
* ``top1``: whether the candidate CLIP ranks first matches;
* ``any_of_top_k``: whether any of the K best-ranked candidates matches (what
  a user looking at the K images ``generate`` keeps would find).

Reported overall, for one- and two-object captions, and per attribute: for each
check of ``grader.CHECKS`` (count, colour, shape, size, position, relation),
among the captions that state it, how often that check passes for a random
candidate, for the CLIP top-1 and for any of the top K. The ranking is always
by the whole caption; it is not redone per attribute.

Splits. ``seen`` is the Shapes ``test`` split: new scenes, but colour–shape
pairs the models saw in training. ``compositional`` uses the five held-out
pairs ("a green triangle", ...), which no training caption ever mentions. The
raw split names (``test``, ``compositional``, also ``train``, ``val``) are
accepted too. Captions come from ``shapes.make_scenes(split, n_prompts, seed)``.

Reproducibility: one ``torch.Generator`` seeded with ``seed`` draws all the
samples, ``prompts_per_batch`` captions (P·N rows) per sampling call, so a
report is a function of the models, the split, ``n_prompts``, ``candidates``,
``seed``, the sampling settings and ``prompts_per_batch``. (The images differ
from those of ``pipeline.generate``, which seeds each prompt on its own.)

Without a CLIP model no ranking exists: top-1 is the first sample and top-K
the first K, in sampling order, and the report says ``"reranked": false``.

Letters used in shape comments: P prompts per sampling call, N candidates, K
kept, B = P·N rows, Lt text length, H, W, C image height, width and channels.

One model at a time, each asking the question its lesson needs answered:
``evaluate_reconstructions`` (lesson 2: does the grader still read the caption
off the dVAE's argmax round trip?), ``evaluate_samples`` (lesson 3: does one
sample of the transformer show its caption?) and ``evaluate_clip`` (lesson 4:
zero-shot accuracy per attribute, and text -> image retrieval).

One prompt at a time, every image graded: what the lessons' playgrounds draw.
``graded_samples`` (lesson 3: n samples of the transformer) and
``graded_candidates`` (lessons 4 and 5: the N candidates of
``pipeline.generate``, best first by CLIP).

Does not handle: prompts outside the Shapes grammar (they cannot be graded;
use ``shapes.make_scenes`` captions), confidence intervals (with 200 captions
a rate is good to about ±3.5 points), or other scorers than CLIP's cosine
similarity (a ``scorer`` function can be passed in; tests pass a perfect one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from . import grader, shapes
from .bpe import ByteLevelBPE, load_tokenizer
from .clip import (ATTRIBUTES, CLIP, OPPOSITE, attribute_values, encode_images_batched, encode_texts,
                   one_object_scenes, retrieval_at_1, scene_attributes, zero_shot_probs)
from .dvae import DVAE, codebook_stats, psnr, reconstruct_batched
from .images import to_float_images, to_uint8_images
from .pipeline import Models, generate
from .sampling import CONDITION_SCALE, TEMPERATURE, sample_images, seeded_generator
from .transformer import DalleTransformer, encode_captions

# the course's names for the two measured splits -> the Shapes split they read
SPLIT_NAMES = {"seen": "test", "compositional": "compositional"}

# A scorer rates image b against caption b: (captions (B,), uint8 images (B, H, W, C)) -> scores (B,), higher is better.
Scorer = Callable[[Sequence[str], np.ndarray], np.ndarray]

ROWS = ("random", "top1", "any_of_top_k")  # the three numbers of every row of a report


def resolve_split(split: str) -> tuple[str, str]:
    """A split name -> (the name to report, the Shapes split it reads); ``ValueError`` for an unknown name.

    Example: "seen" -> ("seen", "test"); "test" -> ("seen", "test"); "val" -> ("val", "val").
    """
    if split in SPLIT_NAMES:
        return split, SPLIT_NAMES[split]
    if split in shapes.SPLITS:
        named = {raw: name for name, raw in SPLIT_NAMES.items()}
        return named.get(split, split), split
    raise ValueError(f"unknown split {split!r}: there are no Shapes captions to draw and grade for it. "
                     f"Use {' or '.join(SPLIT_NAMES)} (or a Shapes split: {', '.join(shapes.SPLITS)}; "
                     "seen = the Shapes 'test' split)")


def clip_scorer(model: torch.nn.Module, tokenizer) -> Scorer:
    """A ``Scorer`` that gives the cosine similarity v · t of CLIP's unit image and caption vectors, in [-1, 1].

    The same score as ``clip.rerank``; each distinct caption is encoded once.
    """
    from .clip import encode_images_batched, encode_texts  # lesson 4, imported only when reranking

    def score(captions: Sequence[str], images: np.ndarray) -> np.ndarray:
        unique = list(dict.fromkeys(captions))  # caption -> its row in t, first-seen order
        t = encode_texts(model, tokenizer, unique)  # (U, E)
        row = torch.tensor([unique.index(c) for c in captions], device=t.device)  # (B,)
        v = encode_images_batched(model, images)  # (B, E)
        return (v * t[row]).sum(dim=-1).cpu().numpy().astype(np.float32)  # (B,): v_b · t_caption(b)

    return score


def ranking(scores: np.ndarray | None, n: int) -> np.ndarray:
    """Candidate indices, best first: by descending score, ties in sampling order; sampling order without scores.

    Example: [0.1, 0.7, 0.7, 0.3] -> [1, 2, 3, 0]; None, 3 -> [0, 1, 2].
    """
    if scores is None:
        return np.arange(n)
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def _rate(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _row(outcomes: list[tuple[np.ndarray, np.ndarray]], keep: int) -> dict:
    """One row of a report from (passes (N,) bool, ranking (N,)) per caption: the three rates and the count."""
    return {
        "random": _rate([passes.mean() for passes, _ in outcomes]),
        "top1": _rate([passes[order[0]] for passes, order in outcomes]),
        "any_of_top_k": _rate([passes[order[:keep]].any() for passes, order in outcomes]),
        "n": len(outcomes),
    }


@torch.no_grad()
def evaluate_pipeline(
    models: Models,
    split: str = "seen",
    n_prompts: int = 200,
    candidates: int = 16,
    keep: int = 4,
    seed: int = 0,
    temperature: float = TEMPERATURE,
    top_k: int | None = None,
    top_p: float | None = None,
    condition_scale: float = CONDITION_SCALE,
    prompts_per_batch: int = 4,
    progress: bool = True,
    scorer: Scorer | None = None,
) -> dict:
    """Sample ``candidates`` images for each of ``n_prompts`` captions of ``split``, grade and rank them.

    ``scorer`` ranks the candidates; by default CLIP's cosine similarity
    (``clip_scorer``) when ``models.clip`` exists, else none (sampling order).
    Returns::

        {"split": "seen", "shapes_split": "test", "n": 200, "candidates": 16, "keep": 4, "seed": 0,
         "reranked": True, "sampling": {"temperature", "top_k", "top_p", "condition_scale", "prompts_per_batch"},
         "overall":      {"random": rate, "top1": rate, "any_of_top_k": rate, "n": captions},
         "by_objects":   {1: row, 2: row},
         "by_attribute": {check: row among the captions that state it, for each of grader.CHECKS},
         "prompts":      [{"caption", "objects", "matches": [bool] * N, "scores": [float] * N or None,
                           "ranking": candidate indices, best first}, ...]}

    A rate is None when no caption counts towards it (e.g. "relation" among
    one-object captions only).
    """
    name, shapes_split = resolve_split(split)
    if n_prompts < 1:
        raise ValueError(f"n_prompts must be at least 1, got {n_prompts}")
    if candidates < 1:
        raise ValueError(f"candidates must be at least 1, got {candidates}")
    if not 1 <= keep <= candidates:
        raise ValueError(f"keep must be between 1 and candidates ({candidates}), got {keep}")
    if prompts_per_batch < 1:
        raise ValueError(f"prompts_per_batch must be at least 1, got {prompts_per_batch}")
    from tqdm.auto import tqdm

    transformer, dvae = models.transformer.eval(), models.dvae.eval()
    device = transformer.image_head.weight.device
    dvae.to(device)
    if scorer is None and models.clip is not None:
        scorer = clip_scorer(models.clip.to(device).eval(), models.tokenizer)

    scenes = shapes.make_scenes(shapes_split, n_prompts, seed)
    captions = [scene.caption for scene in scenes]
    text = encode_captions(models.tokenizer, captions, transformer.config.text_len)  # (n, Lt)
    generator = torch.Generator(device=device).manual_seed(seed)

    records = []  # per caption: {"caption", "objects", "matches", "scores", "ranking"}
    checks = []  # per caption: {check: passes (N,) bool} for the checks its caption states
    bar = tqdm(total=n_prompts, desc=f"evaluating ({name})", unit="caption", disable=not progress)
    for start in range(0, n_prompts, prompts_per_batch):
        batch = captions[start:start + prompts_per_batch]  # P captions
        rows = text[start:start + len(batch)].repeat_interleave(candidates, dim=0)  # (B, Lt): N rows per caption
        images, _ = sample_images(transformer, dvae, rows, temperature=temperature, top_k=top_k, top_p=top_p,
                                  condition_scale=condition_scale, generator=generator)  # (B, H, W, C) uint8
        row_captions = [c for c in batch for _ in range(candidates)]  # (B,), caption of each row
        scores = None if scorer is None else np.asarray(scorer(row_captions, images), dtype=np.float32)  # (B,)
        for p, caption in enumerate(batch):
            own = slice(p * candidates, (p + 1) * candidates)  # this caption's N rows
            grades = [grader.grade(image, caption) for image in images[own]]
            own_scores = None if scores is None else scores[own]  # (N,)
            records.append({
                "caption": caption,
                "objects": len(scenes[start + p].objects),
                "matches": [g.match for g in grades],
                "scores": None if own_scores is None else [float(s) for s in own_scores],
                "ranking": [int(i) for i in ranking(own_scores, candidates)],
            })
            stated = [c for c in grader.CHECKS if grades[0].checks[c] is not None]  # depends on the caption only
            checks.append({c: np.array([bool(g.checks[c]) for g in grades]) for c in stated})
        bar.update(len(batch))
    bar.close()

    outcomes = [(np.array(r["matches"]), np.array(r["ranking"])) for r in records]
    return {
        "split": name,
        "shapes_split": shapes_split,
        "n": len(records),
        "candidates": candidates,
        "keep": keep,
        "seed": seed,
        "reranked": scorer is not None,
        "sampling": {"temperature": temperature, "top_k": top_k, "top_p": top_p,
                     "condition_scale": condition_scale, "prompts_per_batch": prompts_per_batch},
        "overall": _row(outcomes, keep),
        "by_objects": {k: _row([o for o, r in zip(outcomes, records) if r["objects"] == k], keep) for k in (1, 2)},
        "by_attribute": {c: _row([(passes[c], o[1]) for passes, o in zip(checks, outcomes) if c in passes], keep)
                         for c in grader.CHECKS},
        "prompts": records,
    }


def evaluate_splits(models: Models, splits: Sequence[str] = ("seen", "compositional"), **kwargs) -> dict[str, dict]:
    """``evaluate_pipeline`` on each split with the same settings: {split name: report}, in the order given."""
    return {resolve_split(split)[0]: evaluate_pipeline(models, split, **kwargs) for split in splits}


def format_evaluation(report: dict) -> str:
    """A report as an aligned plain-text table: rows all / 1 object / 2 objects / each attribute.

    Example (the figures are made up)::

        seen captions (Shapes 'test' split): 200 captions, 16 candidates each, reranked by CLIP
        sampling: temperature 1.0, top-k none, top-p none, condition scale 3.0, seed 0

                           captions   random   CLIP top-1   any of top 4
        all                     200    31.2%        44.5%          63.0%
        1 object                 97    ...
    """

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1%}"

    def optional(v) -> str:
        return "none" if v is None else f"{v}"

    s, k = report["sampling"], report["keep"]
    top1 = "CLIP top-1" if report["reranked"] else "first sample"
    topk = f"any of top {k}" if report["reranked"] else f"any of first {k}"
    ranked = "reranked by CLIP" if report["reranked"] else "not reranked (no CLIP model: sampling order)"
    lines = [
        f"{report['split']} captions (Shapes {report['shapes_split']!r} split): {report['n']} captions, "
        f"{report['candidates']} candidates each, {ranked}",
        f"sampling: temperature {s['temperature']}, top-k {optional(s['top_k'])}, top-p {optional(s['top_p'])}, "
        f"condition scale {s['condition_scale']}, seed {report['seed']}",
        "",
    ]
    by_objects = {int(n): row for n, row in report["by_objects"].items()}  # int keys, also after a JSON round trip
    table = [("all", report["overall"])]
    table += [(f"{n} object{'s' if n > 1 else ''}", by_objects[n]) for n in sorted(by_objects)]
    table += [(f"  {check}", row) for check, row in report["by_attribute"].items()]
    header = ("", "captions", "random", top1, topk)
    cells = [header] + [(label, str(row["n"]), *(pct(row[r]) for r in ROWS)) for label, row in table]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    first_attribute = 2 + len(by_objects)  # the header, "all", then one row per number of objects
    for i, cell in enumerate(cells):
        if i == first_attribute:
            lines.append("per attribute (the check passes):")
        first = cell[0].ljust(widths[0])
        lines.append("   ".join([first] + [c.rjust(w) for c, w in zip(cell[1:], widths[1:])]).rstrip())
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# one model at a time: the dVAE's round trips, the transformer's samples, CLIP's zero-shot reading
# ---------------------------------------------------------------------------


@torch.no_grad()
def evaluate_reconstructions(
    model: DVAE, n_per_split: int = 500, seed: int = 0, splits: tuple[str, ...] = ("test", "compositional")
) -> dict:
    """Grade argmax reconstructions of held-out Shapes images against their captions.

    For each split: ``n_per_split`` scenes rendered from ``seed``, encoded to
    codes, decoded, quantised to uint8 and graded by ``grader.grade``. Returns
    ``{"match": overall rate, "by_split": {split: rate}, "by_objects": {1: rate, 2: rate},
    "failures": {check: count}, "psnr": dB, "perplexity": ..., "dead_codes": ..., "n": ...}``.
    """
    model.eval()
    rows, originals, recons = [], [], []
    for split in splits:
        scenes = shapes.make_scenes(split, n_per_split, seed)
        x = to_float_images(shapes.render_batch(scenes))  # (n, C, H, W)
        x_rec = reconstruct_batched(model, x)  # (n, C, H, W)
        rec_u8 = to_uint8_images(x_rec)  # (n, H, W, C)
        for scene, image in zip(scenes, rec_u8):
            g = grader.grade(image, scene.caption)
            rows.append((split, len(scene.objects), bool(g.match), g.checks))
        originals.append(x)
        recons.append(x_rec)
    x, x_rec = torch.cat(originals), torch.cat(recons)

    def rate(keep) -> float:
        sel = [r[2] for r in rows if keep(r)]
        return sum(sel) / max(len(sel), 1)

    failures: dict[str, int] = {}
    for _, _, ok, checks in rows:
        for name, passed in checks.items():
            if not ok and passed is False:
                failures[name] = failures.get(name, 0) + 1
    stats = codebook_stats(model, x)
    return {
        "match": rate(lambda r: True),
        "by_split": {s: rate(lambda r, s=s: r[0] == s) for s in splits},
        "by_objects": {k: rate(lambda r, k=k: r[1] == k) for k in (1, 2)},
        "failures": failures,
        "psnr": psnr(x_rec, x),
        "perplexity": stats["perplexity"],
        "dead_codes": stats["dead_codes"],
        "n": len(rows),
    }


@torch.no_grad()
def caption_round_trip_rate(model: DVAE, caption: str, n: int = 40, seed: int = 0) -> float:
    """How often the argmax round trip of a fresh image of ``caption`` is still graded as ``caption``.

    ``n`` images drawn by ``shapes.scene_for_caption`` from ``seed`` (what the
    caption leaves open, such as position, varies). It isolates one colour,
    shape and size: ``"a small blue cross"`` asks whether the codebook can
    draw that object at all. Example: the shipped dVAE, n=40 -> 0.0 for a small
    red cross (the strict grader rejects its pinched, four-pointed crosses).
    """
    rng = np.random.default_rng(seed)
    scenes = [shapes.scene_for_caption(caption, rng) for _ in range(n)]
    x_rec = reconstruct_batched(model.eval(), to_float_images(shapes.render_batch(scenes)))
    rec_u8 = to_uint8_images(x_rec)  # (n, H, W, C)
    return sum(bool(grader.grade(image, caption).match) for image in rec_u8) / n


def format_reconstruction_report(report: dict) -> str:
    """One readable block of ``evaluate_reconstructions`` figures."""
    splits = ", ".join(f"{s} {v:.1%}" for s, v in report["by_split"].items())
    objects = ", ".join(f"{k} object{'s' if k > 1 else ''} {v:.1%}" for k, v in report["by_objects"].items())
    return (
        f"graded match of argmax reconstructions: {report['match']:.1%} of {report['n']} ({splits}; {objects})\n"
        f"failed checks: {report['failures'] or 'none'}\n"
        f"PSNR {report['psnr']:.2f} dB | codebook perplexity {report['perplexity']:.1f} | dead codes {report['dead_codes']}"
    )


@torch.no_grad()
def evaluate_samples(
    model: DalleTransformer,
    dvae: DVAE,
    tokenizer,
    split: str = "test",
    n_prompts: int = 100,
    seed: int = 0,
    condition_scale: float = CONDITION_SCALE,
    temperature: float = TEMPERATURE,
    top_k: int | None = None,
    top_p: float | None = None,
    batch_size: int = 50,
    progress: bool = False,
) -> dict:
    """Draw one image for each of ``n_prompts`` captions of ``split`` and grade it with ``grader.grade``.

    The captions are those of ``shapes.make_scenes(split, n_prompts, seed)``,
    and ``seed`` also seeds the sampler, so a report is repeatable. Returns
    ``{"match": overall rate, "by_objects": {1: rate, 2: rate},
    "by_attribute": {check: rate among captions that state it}, "n": ...,
    "split": ..., "condition_scale": ...}``. A rate is None when no caption
    counts towards it.
    """
    from tqdm.auto import tqdm

    device = model.image_head.weight.device
    scenes = shapes.make_scenes(split, n_prompts, seed)
    text = encode_captions(tokenizer, [s.caption for s in scenes], model.config.text_len)  # (n, Lt)
    generator = seeded_generator(seed, device)
    rows = []  # (number of objects, Grade)
    for i in tqdm(range(0, n_prompts, batch_size), desc=f"grading samples ({split})", disable=not progress):
        images, _ = sample_images(model, dvae, text[i:i + batch_size], temperature=temperature, top_k=top_k,
                                  top_p=top_p, condition_scale=condition_scale, generator=generator)
        for scene, image in zip(scenes[i:i + batch_size], images):
            rows.append((len(scene.objects), grader.grade(image, scene.caption)))

    def rate(values: list[bool]) -> float | None:
        return sum(values) / len(values) if values else None

    return {
        "match": rate([g.match for _, g in rows]),
        "by_objects": {k: rate([g.match for n, g in rows if n == k]) for k in (1, 2)},
        "by_attribute": {c: rate([g.checks[c] for _, g in rows if g.checks[c] is not None]) for c in grader.CHECKS},
        "n": len(rows),
        "split": split,
        "condition_scale": condition_scale,
    }


def format_sample_report(report: dict) -> str:
    """One readable line of ``evaluate_samples`` figures."""

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1%}"

    objects = ", ".join(f"{k} object{'s' if k > 1 else ''} {pct(v)}" for k, v in report["by_objects"].items())
    attributes = ", ".join(f"{k} {pct(v)}" for k, v in report["by_attribute"].items())
    return (f"graded match of samples: {pct(report['match'])} of {report['n']} {report['split']} captions "
            f"(condition scale {report['condition_scale']}; {objects})\nper attribute: {attributes}")


def zero_shot_accuracy(model: CLIP, tokenizer, images: np.ndarray, scenes: list[shapes.Scene]) -> dict[str, float]:
    """Zero-shot accuracy per attribute of one-object ``images`` whose scenes are ``scenes``."""
    probs = zero_shot_probs(model, tokenizer, images)  # attribute -> (N, n_values)
    labels = [scene_attributes(s) for s in scenes]
    acc = {}
    for attribute in ATTRIBUTES:
        values = attribute_values(attribute)
        target = torch.tensor([values.index(lab[attribute]) for lab in labels])
        acc[attribute] = (probs[attribute].argmax(-1) == target).float().mean().item()
    return acc


@torch.no_grad()
def evaluate_clip(model: CLIP, tokenizer: ByteLevelBPE | None = None, n: int = 500, seed: int = 0) -> dict:
    """Zero-shot accuracy per attribute on held-out images, and text -> image R@1 on 100 scenes.

    Returns ``{"zero_shot": {"test": {attribute: acc}, "compositional": {attribute: acc}},
    "retrieval_at_1": r, "relation": relation_probe(...), "n": n}``: ``n`` one-object images per split
    (``test`` = colour–shape pairs seen in training, ``compositional`` = the
    five held-out pairs), R@1 over the first 100 ``test`` scenes (one or two
    objects, a grader-equivalent image counting as a hit), and the relation
    probe on 200 two-object ``test`` images.
    """
    tokenizer = tokenizer or load_tokenizer()
    model.eval()
    zero_shot = {}
    for split in ("test", "compositional"):
        scenes = one_object_scenes(split, n, seed)
        zero_shot[split] = zero_shot_accuracy(model, tokenizer, shapes.render_batch(scenes), scenes)
    scenes = shapes.make_scenes("test", 100, seed)
    r1 = retrieval_at_1(model, tokenizer, shapes.render_batch(scenes), [s.caption for s in scenes])
    return {"zero_shot": zero_shot, "retrieval_at_1": r1, "relation": relation_probe(model, tokenizer, 200, seed),
            "n": n}


def format_clip_report(report: dict) -> str:
    """One readable block of ``evaluate_clip`` figures."""
    lines = [f"zero-shot accuracy on {report['n']} one-object images per split:"]
    for split, acc in report["zero_shot"].items():
        lines.append(f"  {split:<13} " + ", ".join(f"{k} {v:.1%}" for k, v in acc.items()))
    lines.append(f"text -> image R@1 on 100 test scenes: {report['retrieval_at_1']:.1%}")
    if "relation" in report:
        probe = report["relation"]
        lines.append(f"true caption over its relation-reversed twin: {probe['accuracy']:.1%} of {probe['n']} "
                     f"two-object images (mean cosine margin {probe['margin']:.3f}; chance 50%)")
    return "\n".join(lines)


@torch.no_grad()
def relation_probe(model: CLIP, tokenizer, n: int = 200, seed: int = 0, split: str = "test") -> dict:
    """Does CLIP tell "A left of B" from "A right of B"? ``n`` two-object images of ``split``, each scored
    against its caption and the same caption with the relation reversed (``clip.OPPOSITE``).

    Returns ``{"accuracy": share of images whose true caption scores higher, "margin": mean cosine difference,
    "n": n}``. Chance is 0.5; a CLIP that reads the relation is near 1.
    """
    scenes = [shapes.sample_scene(shapes.scene_rng(split, seed, i), split, n_objects=2) for i in range(n)]
    swapped = [s.caption.replace(s.relation, OPPOSITE[s.relation]) for s in scenes]
    v = encode_images_batched(model, shapes.render_batch(scenes))  # (n, E)
    true = (v * encode_texts(model, tokenizer, [s.caption for s in scenes])).sum(-1)  # (n,) cosines
    false = (v * encode_texts(model, tokenizer, swapped)).sum(-1)
    return {"accuracy": (true > false).float().mean().item(), "margin": (true - false).mean().item(), "n": n}


# ---------------------------------------------------------------------------
# one prompt at a time, every image graded: what the playgrounds and the reranking viewer draw
# ---------------------------------------------------------------------------


@torch.no_grad()
def graded_samples(model: DalleTransformer, dvae: DVAE, tokenizer, prompt: str, n: int = 8,
                   temperature: float = TEMPERATURE, top_k: int = 0, top_p: float = 1.0,
                   condition_scale: float = CONDITION_SCALE, seed: int = 0) -> tuple[np.ndarray, list[grader.Grade]]:
    """Sample ``n`` images for ``prompt`` and grade each: (uint8 images (n, H, W, C), one ``grader.Grade`` each).

    ``top_k`` 0 and ``top_p`` 1.0 mean "off". The same (prompt, knobs, seed) always gives the same images.
    """
    device = model.image_head.weight.device
    text = encode_captions(tokenizer, [prompt], model.config.text_len).repeat(n, 1)  # (n, Lt)
    images, _ = sample_images(model, dvae, text, temperature=temperature, top_k=top_k or None,
                              top_p=top_p if top_p < 1.0 else None, condition_scale=condition_scale,
                              generator=seeded_generator(seed, device))  # (n, H, W, C)
    return images, [grader.grade(image, prompt) for image in images]


@dataclass
class GradedCandidates:
    """All N candidates ``pipeline.generate`` draws for one prompt, best first, each graded."""

    prompt: str
    images: np.ndarray  # uint8 (N, H, W, C): best first by CLIP, or in sampling order without a CLIP model
    scores: np.ndarray | None  # float32 (N,): CLIP cosine similarity to the prompt; None without a CLIP model
    grades: list[grader.Grade]  # one per image


def graded_candidates(models: Models, prompt: str, candidates: int = 16, seed: int = 0,
                      temperature: float = TEMPERATURE, top_k: int | None = None, top_p: float | None = None,
                      condition_scale: float = CONDITION_SCALE, device: str | None = None) -> GradedCandidates:
    """``pipeline.generate`` for one prompt with every candidate kept, and each candidate graded.

    The same images as ``generate`` with the same seed and knobs, in the same
    order (its best ``keep`` are the first ``keep`` here); ``grades[i]`` is
    ``grader.grade(images[i], prompt)``.
    """
    result = generate(prompt, models.transformer, models.dvae, models.tokenizer, candidates=candidates,
                      keep=candidates, seed=seed, temperature=temperature, top_k=top_k, top_p=top_p,
                      condition_scale=condition_scale, clip_model=models.clip, device=device)[0]
    return GradedCandidates(prompt, result.images, result.scores,
                            [grader.grade(image, prompt) for image in result.images])
