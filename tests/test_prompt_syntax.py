"""A1111 prompt syntax: attention weights, BREAK, editing, alternation, AND, long prompts."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from webui.engine.conditioning import Conditioning, PromptSchedule, chunk_count, encode_prompts
from webui.engine.prompt_parser import (
    parse_weighted,
    prompt_warnings,
    schedule_prompt,
    split_and,
)
from webui.model_manager.embeddings import apply_embeddings
from webui.model_manager.load import load_model
from webui.tools.tiny_networks import write_tiny_embedding

CPU = torch.device("cpu")
UP, DOWN = 1.1, 1 / 1.1
# Words that are one CLIP token each, so token counts are word counts.
WORDS = ["cat", "dog", "red", "blue", "green", "house", "tree", "car", "sky", "sun", "moon", "star"]


def words(count: int, offset: int = 0) -> str:
    return " ".join(WORDS[(offset + i) % len(WORDS)] for i in range(count))


def close(actual: list[tuple[str, float]], expected: list[tuple[str, float]]) -> bool:
    return [text for text, _ in actual] == [text for text, _ in expected] and all(
        a == pytest.approx(e) for (_, a), (_, e) in zip(actual, expected)
    )


# --- parse_weighted ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a cat", [("a cat", 1.0)]),
        ("a (cat)", [("a ", 1.0), ("cat", UP)]),
        ("a [cat]", [("a ", 1.0), ("cat", DOWN)]),
        ("((cat)) [[dog]]", [("cat", UP * UP), (" ", 1.0), ("dog", DOWN * DOWN)]),
        ("(cat:1.3) dog", [("cat", 1.3), (" dog", 1.0)]),
        ("((cat:1.5) dog)", [("cat", 1.5 * UP), (" dog", UP)]),
        ("[(cat:1.5)]", [("cat", 1.5 * DOWN)]),
        ("( cat : 0.5 )", [(" cat ", 0.5)]),
        (r"\(cat\) \[dog\] a\\b", [(r"(cat) [dog] a\b", 1.0)]),
        (r"(\(cat\))", [("(cat)", UP)]),
        ("a (cat", [("a ", 1.0), ("cat", UP)]),  # open brackets close at the end
        ("a [cat (dog", [("a ", 1.0), ("cat ", DOWN), ("dog", DOWN * UP)]),
        ("a ] b) c", [("a ] b) c", 1.0)]),  # nothing open: literal
        ("(a [b) c]", [("a ", UP), ("b", 1.0), (" c", DOWN)]),  # ( and [ close independently
        ("(a)(b)", [("ab", UP)]),  # equal weights merge
        ("a (b:1.0) c", [("a b c", 1.0)]),
        ("cat:1.2", [("cat:1.2", 1.0)]),
        ("(cat:1.2.3)", [("cat:1.2.3", UP)]),  # not a number: literal, the bracket still counts
        ("", [("", 1.0)]),
        ("()", [("", 1.0)]),
    ],
)
def test_parse_weighted(text: str, expected: list[tuple[str, float]]) -> None:
    assert close(parse_weighted(text), expected), parse_weighted(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
        ("a,BREAK,b", [("a,", 1.0), ("BREAK", -1.0), (",b", 1.0)]),
        ("(a BREAK b)", [("a", UP), ("BREAK", -1.0), ("b", UP)]),
        ("BREAK BREAK", [("BREAK", -1.0), ("BREAK", -1.0)]),
        ("BREAK (x:-1)", [("BREAK", -1.0), ("x", -1.0)]),
        ("breakfast BREAKS break", [("breakfast BREAKS break", 1.0)]),
    ],
)
def test_parse_weighted_break(text: str, expected: list[tuple[str, float]]) -> None:
    assert close(parse_weighted(text), expected), parse_weighted(text)


# --- schedule_prompt ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "steps", "expected"),
    [
        ("a [cat:dog:0.5] b", 20, [(10, "a cat b"), (20, "a dog b")]),
        ("[cat:dog:0.25]", 10, [(2, "cat"), (10, "dog")]),  # int(2.5): A1111 truncates
        ("[cat:dog:7]", 20, [(7, "cat"), (20, "dog")]),
        ("[cat:dog: 7 ]", 20, [(7, "cat"), (20, "dog")]),
        ("a [dog:5]", 10, [(5, "a "), (10, "a dog")]),
        ("a [cat::5]", 10, [(5, "a cat"), (10, "a ")]),
        ("[cat:[dog:fox:6]:3]", 10, [(3, "cat"), (6, "dog"), (10, "fox")]),
        ("[[a|b]:c:2]", 4, [(1, "a"), (2, "b"), (4, "c")]),
        ("x [a|b]", 4, [(1, "x a"), (2, "x b"), (3, "x a"), (4, "x b")]),
        ("[a|b|c]", 5, [(1, "a"), (2, "b"), (3, "c"), (4, "a"), (5, "b")]),
        ("[a|a]", 3, [(3, "a")]),
        ("[cat:dog:30]", 20, [(20, "cat")]),
        ("[cat:dog:0]", 20, [(20, "dog")]),
        ("plain", 1, [(1, "plain")]),
        ("", 5, [(5, "")]),
    ],
)
def test_schedule_prompt(text: str, steps: int, expected: list[tuple[int, str]]) -> None:
    assert schedule_prompt(text, steps) == expected


@pytest.mark.parametrize(
    "text",
    [
        "(cat:1.2) [dog] ((fox)) (a:b) [x] [[y]] \\[z:w:1\\] a:b | c",
        "a [cat",  # an unclosed attention bracket, which parse_weighted closes
    ],
)
def test_attention_passes_through_scheduling(text: str) -> None:
    assert schedule_prompt(text, 10) == [(10, text)]
    assert prompt_warnings(text, 10) == []


def test_weights_inside_schedules_and_schedules_inside_weights() -> None:
    text = "[(cat:1.2):dog:2] ([red|blue]:1.3)"
    assert schedule_prompt(text, 3) == [
        (1, "(cat:1.2) (red:1.3)"),
        (2, "(cat:1.2) (blue:1.3)"),
        (3, "dog (red:1.3)"),
    ]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a [b:c:d:e] f", "more than two ':'"),
        ("a [b:c:x] f", "'x', which is not a step number"),
        ("a [b:c] f", "'c', which is not a step number"),
        ("a [from:to:", "never closed"),
        ("a [b|c:1] f", "mixes ':' and '|'"),
    ],
)
def test_malformed_prompts_are_literal_with_a_warning(
    text: str, fragment: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="webui.engine.prompt_parser"):
        assert schedule_prompt(text, 10) == [(10, text)]
    warnings = prompt_warnings(text, 10)
    assert len(warnings) == 1 and fragment in warnings[0]
    assert [record.getMessage() for record in caplog.records] == [f"prompt: {warnings[0]}"]


def test_a_malformed_bracket_leaves_the_rest_scheduled() -> None:
    assert schedule_prompt("[a:b:x] [cat:dog:2]", 4) == [(2, "[a:b:x] cat"), (4, "[a:b:x] dog")]


def test_switches_outside_the_steps_are_reported() -> None:
    assert prompt_warnings("[cat:dog:0.5]", 20) == []
    (late,) = prompt_warnings("[cat:dog:30]", 20)
    assert "'dog' is never used" in late
    (early,) = prompt_warnings("[cat:dog:0.01]", 20)
    assert "'cat' is never used" in early


def test_pathological_brackets_do_not_raise() -> None:
    deep = "[" * 3000 + "a:b:1" + "]" * 3000
    assert schedule_prompt(deep, 5) == [(5, deep)]
    assert "nested too deeply" in prompt_warnings(deep, 5)[0]
    unclosed = "[a: " * 300
    assert schedule_prompt(unclosed, 5) == [(5, unclosed)]


# --- split_and ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a cat AND a dog :0.5", [("a cat", 1.0), ("a dog", 0.5)]),
        ("a cat:1.5 AND a dog", [("a cat", 1.5), ("a dog", 1.0)]),
        ("a AND b AND c : -2", [("a", 1.0), ("b", 1.0), ("c", -2.0)]),
        ("ANDROID and ANDes (x:1.2)", [("ANDROID and ANDes (x:1.2)", 1.0)]),
        ("[a:b:0.5] AND c", [("[a:b:0.5]", 1.0), ("c", 1.0)]),
        ("", [("", 1.0)]),
    ],
)
def test_split_and(text: str, expected: list[tuple[str, float]]) -> None:
    assert split_and(text) == expected


# --- encoding ----------------------------------------------------------------------------------


def embeds(model, prompt: str, clip_skip: int = 1) -> torch.Tensor:
    return encode_prompts(model, [prompt], clip_skip).embeds


@pytest.mark.parametrize(("arch", "clip_skip"), [("sd15", 1), ("sd15", 2), ("sd2", 1)])
def test_short_prompt_matches_standard_tokenization(tiny_model, arch: str, clip_skip: int) -> None:
    """One chunk is exactly the usual 77-token encoding, SD2's "!" padding included."""
    model = tiny_model(arch)
    tokenizer, encoder = model.tokenizers[0], model.text_encoders[0]
    ids = tokenizer(
        ["a red cat, sitting"], padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    with torch.inference_mode():
        if clip_skip == 1:
            expected = encoder(ids)[0]
        else:
            expected = encoder.final_layer_norm(
                encoder(ids, output_hidden_states=True).hidden_states[-clip_skip]
            )
    assert torch.allclose(embeds(model, "a red cat, sitting", clip_skip), expected, atol=1e-6)


def test_weights_reach_the_embeddings(tiny_model) -> None:
    model = tiny_model("sd15")
    plain = embeds(model, "a cat")
    assert torch.equal(embeds(model, "a (cat:1.0)"), plain)
    assert torch.equal(embeds(model, "a (cat:1.5)"), embeds(model, "a ((cat:1.5):1.0)"))
    weighted = embeds(model, "a (cat:1.5)")
    assert not torch.allclose(weighted, plain)
    # A fresh encoder's final norm has no bias, so its outputs average to ~0: no mean to restore.
    assert abs(plain.mean().item()) < 1e-6
    assert torch.allclose(weighted, plain * token_scale(2, 1.5), atol=1e-6)


def test_weighting_restores_the_chunk_mean(tiny_dir: Path) -> None:
    """A1111's "Original" emphasis: scale the token, then rescale the chunk to its old mean."""
    model = load_model(tiny_dir / "tiny-sd15.safetensors", CPU, torch.float32)  # edited below
    with torch.no_grad():
        model.text_encoders[0].final_layer_norm.bias.fill_(0.25)  # as trained encoders: a mean
    plain, weighted = embeds(model, "a cat"), embeds(model, "a (cat:1.5)")
    expected = plain * token_scale(2, 1.5)
    expected = expected * (plain.mean() / expected.mean())
    assert torch.allclose(weighted, expected, atol=1e-6)
    assert weighted.mean().item() == pytest.approx(plain.mean().item(), rel=1e-5)
    assert not torch.allclose(weighted, plain * token_scale(2, 1.5), atol=1e-3)


def token_scale(position: int, weight: float) -> torch.Tensor:
    scale = torch.ones(1, 77, 1)
    scale[0, position] = weight  # position 0 is [BOS]
    return scale


@pytest.mark.parametrize(("tokens", "chunks"), [(0, 1), (1, 1), (75, 1), (76, 2), (150, 2), (160, 3)])
def test_long_prompts_take_more_chunks(tiny_model, tokens: int, chunks: int) -> None:
    model = tiny_model("sd15")
    prompt = words(tokens)
    assert chunk_count(model, prompt) == chunks
    assert embeds(model, prompt).shape == (1, 77 * chunks, 32)


def test_each_chunk_is_encoded_on_its_own(tiny_model) -> None:
    model = tiny_model("sd15")
    long = embeds(model, words(100))
    assert torch.allclose(long[:, :77], embeds(model, words(75)), atol=1e-6)
    assert torch.allclose(long[:, 77:], embeds(model, words(25, offset=75)), atol=1e-6)


def test_break_starts_a_new_chunk(tiny_model) -> None:
    model = tiny_model("sd15")
    assert chunk_count(model, "a red cat BREAK a blue dog") == 2
    assert chunk_count(model, "a red cat BREAK") == 1
    assert chunk_count(model, "BREAK a red cat") == 2  # A1111 closes the empty chunk too
    assert chunk_count(model, f"{words(75)} BREAK dog") == 2  # a full chunk is closed only once
    both = embeds(model, "a red cat BREAK a blue dog")
    assert torch.allclose(both[:, :77], embeds(model, "a red cat"), atol=1e-6)
    assert torch.allclose(both[:, 77:], embeds(model, "a blue dog"), atol=1e-6)


def test_overflow_moves_words_after_a_recent_comma(tiny_model) -> None:
    model = tiny_model("sd15")
    prompt = f"{words(70)}, {words(10, offset=3)}"  # 81 tokens; the comma is the 71st
    encoded = embeds(model, prompt)
    assert encoded.shape[1] == 154
    assert torch.allclose(encoded[:, :77], embeds(model, f"{words(70)},"), atol=1e-6)
    assert torch.allclose(encoded[:, 77:], embeds(model, words(10, offset=3)), atol=1e-6)
    far = f"{words(40)}, {words(40, offset=3)}"  # the comma is too far back: a plain cut
    assert torch.allclose(
        embeds(model, far)[:, :77], embeds(model, f"{words(40)}, {words(34, 3)}"), atol=1e-6
    )


def test_batch_pads_to_the_longest_with_empty_chunks(tiny_model) -> None:
    model = tiny_model("sd15")
    batch = encode_prompts(model, ["a cat", words(100), "a cat"])
    assert batch.embeds.shape == (3, 154, 32)
    assert torch.equal(batch.embeds[0], batch.embeds[2])
    assert torch.allclose(batch.embeds[0:1, :77], embeds(model, "a cat"), atol=1e-6)
    assert torch.allclose(batch.embeds[0:1, 77:], embeds(model, ""), atol=1e-6)
    # The engine concatenates negative and positive conditionings of different lengths.
    joined = Conditioning.concat([encode_prompts(model, ["blurry"]), encode_prompts(model, [words(160)])])
    assert joined.embeds.shape == (2, 231, 32)
    assert torch.allclose(joined.embeds[0:1, 77:154], embeds(model, ""), atol=1e-6)


def test_sdxl_chunks_both_encoders_and_pools_the_first_chunk(tiny_model) -> None:
    model = tiny_model("sdxl")
    long = encode_prompts(model, [words(100)])
    assert chunk_count(model, words(100)) == 2
    assert long.embeds.shape == (1, 154, 64)  # 32 wide from each encoder, 2 chunks on both
    assert long.pooled is not None and long.pooled.shape == (1, 32)
    first = encode_prompts(model, [words(75)])
    assert torch.allclose(long.embeds[:, :77], first.embeds, atol=1e-6)
    assert torch.allclose(long.pooled, first.pooled, atol=1e-6)
    plain, weighted = encode_prompts(model, ["a cat"]), encode_prompts(model, ["a (cat:1.5)"])
    for half in (slice(0, 32), slice(32, 64)):  # both encoders see the weight
        assert not torch.allclose(weighted.embeds[..., half], plain.embeds[..., half])
    assert torch.equal(weighted.pooled, plain.pooled)  # A1111 pools before weighting


def test_embedding_tokens_survive_weighting(tiny_dir: Path, tmp_path: Path) -> None:
    model = load_model(tiny_dir / "tiny-sd15.safetensors", CPU, torch.float32)  # gets new tokens
    path = write_tiny_embedding("sd15", tmp_path / "shiny.pt", vectors=3)
    (prompt,), used = apply_embeddings(model, ["(shiny:1.3), a cat"], {"shiny": path})
    assert used == ["shiny"] and prompt.startswith("(<ti-")
    placeholders = prompt[1:].split(":")[0]
    assert torch.equal(embeds(model, f"({placeholders}:1.0), a cat"), embeds(model, f"{placeholders}, a cat"))
    assert not torch.allclose(embeds(model, f"{placeholders}, a cat"), embeds(model, "a cat"))
    assert not torch.allclose(embeds(model, prompt), embeds(model, f"{placeholders}, a cat"))
    # An embedding's vectors stay in one chunk: 74 words leave room for one of its three.
    straddling = embeds(model, f"{words(74)} {placeholders}")
    assert straddling.shape[1] == 154
    assert torch.allclose(straddling[:, 77:], embeds(model, placeholders), atol=1e-6)


# --- PromptSchedule ----------------------------------------------------------------------------


def test_prompt_schedule_switches_and_reuses_objects(tiny_model) -> None:
    model = tiny_model("sd15")
    schedule = PromptSchedule.build(model, "a [cat:dog:0.5] AND sky :0.5", "[ugly|blurry]", 10, 1)
    negative, parts = schedule.at(0)
    assert [weight for _, weight in parts] == [1.0, 0.5]
    assert all(part.embeds.shape == (1, 77, 32) for part, _ in parts)
    assert torch.allclose(parts[0][0].embeds, embeds(model, "a cat"), atol=1e-6)
    assert torch.allclose(parts[1][0].embeds, embeds(model, "sky"), atol=1e-6)
    assert torch.allclose(negative.embeds, embeds(model, "ugly"), atol=1e-6)
    assert torch.allclose(schedule.at(1)[0].embeds, embeds(model, "blurry"), atol=1e-6)
    assert schedule.at(2)[0] is negative  # alternation comes back to the same cached object

    before, after = schedule.at(4)[1][0][0], schedule.at(5)[1][0][0]
    assert before is parts[0][0] and after is schedule.at(9)[1][0][0]
    assert torch.allclose(after.embeds, embeds(model, "a dog"), atol=1e-6)
    assert not torch.allclose(before.embeds, after.embeds)
    assert schedule.at(5)[1][1][0] is parts[1][0]  # the unscheduled part never changes
    assert schedule.at(99) is schedule.at(9)


def test_prompt_schedule_without_alternation_returns_one_object_per_segment(tiny_model) -> None:
    model = tiny_model("sdxl")
    schedule = PromptSchedule.build(model, "[cat:dog:3]", "blurry", 6, 1)
    assert schedule.at(0) is schedule.at(2)
    assert schedule.at(3) is schedule.at(5) and schedule.at(2) is not schedule.at(3)
    negative, ((part, _),) = schedule.at(0)
    assert part.pooled is not None and part.pooled.shape == (1, 32) and negative.pooled is not None
