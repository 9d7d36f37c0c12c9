"""MiMo-nano's tasks: answers verified by plain Python, traces well formed, held-out split honoured."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mimo_lab.answer import extract_answer
from mimo_lab.nano import tasks


def _independent_answer(problem: tasks.Problem) -> str:
    """Recompute the answer from the prompt text alone, with plain Python."""
    text = problem.prompt
    if problem.family == "letter_count":
        letter, word = re.findall(r"'([a-z]+)'", text)[:2]
        return str(sum(1 for ch in word if ch == letter))
    if problem.family == "sorting":
        numbers = [int(n) for n in re.findall(r"\d+", text)]
        return ", ".join(str(n) for n in sorted(numbers))
    if problem.family == "linear_equation":
        a, sign, b, c = re.search(r"(\d+)x ([+-]) (\d+) = (-?\d+)", text).groups()
        b = int(b) if sign == "+" else -int(b)
        x = (int(c) - b) / int(a)
        assert x == int(x)
        return str(int(x))
    numbers = [int(n) for n in re.findall(r"\d+", text)]
    if problem.family == "addition":
        return str(numbers[0] + numbers[1])
    if problem.family == "multiplication":
        return str(numbers[0] * numbers[1])
    a, b = numbers  # subtraction: "Subtract b from a" names them the other way round
    return str(a - b if "from" not in text else b - a)


@pytest.mark.parametrize("family", tasks.FAMILIES)
@pytest.mark.parametrize("level", tasks.ALL_LEVELS)
def test_answers_are_right(family, level):
    rng = random.Random(level)
    for _ in range(40):
        problem = tasks.make_problem(family, level, rng)
        assert problem.answer == _independent_answer(problem), problem


@pytest.mark.parametrize("family", tasks.FAMILIES)
def test_traces_are_well_formed_and_end_in_the_answer(family):
    rng = random.Random(0)
    for level in tasks.TRAIN_LEVELS:
        for _ in range(30):
            example = tasks.make_example(tasks.make_problem(family, level, rng), rng)
            text = example.completion
            assert text.startswith("<think>\n") and "\n</think>\n\n" in text
            thinking, answer = text[len("<think>\n"):].split("\n</think>\n\n")
            assert "Check:" in thinking and "Correct." in thinking
            assert extract_answer(answer) == (example.problem.answer, "boxed")
            assert ("Wait," in thinking) == example.slipped


def test_slips_happen_where_7_and_8_meet_and_are_corrected():
    rng = random.Random(1)
    problem = tasks.problem_from_prompt("addition", (17, 28))
    slipped = [tasks.make_example(problem, rng) for _ in range(300)]
    share = sum(e.slipped for e in slipped) / len(slipped)
    assert 0.5 < share < 0.75  # HARD_SLIP_RATE, plus the rare random slip
    example = next(e for e in slipped if e.slipped)
    assert "Ones: 7 + 8 = 14. Wait, 7 + 8 = 15, not 14. So write 5, carry 1." in example.completion


def test_required_prompt_forms_are_produced():
    assert tasks.problem_from_prompt("addition", (128, 367)).prompt == "What is 128 + 367?"
    assert tasks.problem_from_prompt("subtraction", (905, 47)).prompt == "What is 905 - 47?"
    assert tasks.problem_from_prompt("multiplication", (23, 41)).prompt == "What is 23 * 41?"
    assert tasks.problem_from_prompt("linear_equation", (3, 7, 25)).prompt == "Solve for x: 3x + 7 = 25"
    assert (tasks.problem_from_prompt("letter_count", ("r", "strawberry")).prompt
            == "How many times does the letter 'r' appear in 'strawberry'?")
    assert tasks.problem_from_prompt("sorting", (5, 12, 3)).prompt == "Sort these numbers: 5, 12, 3"
    assert tasks.problem_from_prompt("letter_count", ("r", "strawberry")).answer == "3"


def test_held_out_split_is_disjoint_and_deterministic():
    train = {(e.problem.family, e.problem.operands) for e in tasks.sample_examples(2000, seed=5)}
    held = {(p.family, p.operands) for p in tasks.eval_problems(per_cell=10)}
    assert not train & held
    assert all(tasks.is_held_out(f, ops) for f, ops in held)
    assert tasks.sample_examples(5, seed=9) == tasks.sample_examples(5, seed=9)


def test_difficulty_grows_beyond_training():
    rng = random.Random(2)
    digits = {lvl: max(len(str(tasks.make_problem("addition", lvl, rng).operands[0])) for _ in range(50))
              for lvl in tasks.ALL_LEVELS}
    assert digits == {1: 2, 2: 3, 3: 4, 4: 5, 5: 6}
    lengths = {lvl: max(len(tasks.make_problem("sorting", lvl, rng).operands) for _ in range(50))
               for lvl in tasks.ALL_LEVELS}
    assert lengths[4] > lengths[3] and lengths[5] > lengths[4]


def test_bad_family_or_level():
    with pytest.raises(ValueError, match="unknown task family 'division'"):
        tasks.make_problem("division", 1, random.Random())
    with pytest.raises(ValueError, match="difficulty level 9 out of range"):
        tasks.make_problem("addition", 9, random.Random())


@settings(max_examples=200, deadline=None)
@given(a=st.integers(0, 10**6), b=st.integers(0, 10**6))
def test_column_addition_trace_is_arithmetic(a, b):
    problem = tasks.problem_from_prompt("addition", (a, b))
    example = tasks.make_example(problem, random.Random(0))
    for left, right in re.findall(r"((?:\d+ \+ )+\d+) = (\d+),", example.completion):
        assert sum(int(x) for x in left.split(" + ")) == int(right)
    assert example.problem.answer == str(a + b)


@settings(max_examples=200, deadline=None)
@given(a=st.integers(0, 10**6), b=st.integers(0, 10**6), seed=st.integers(0, 100))
def test_column_subtraction_trace_is_arithmetic(a, b, seed):
    a, b = max(a, b), min(a, b)
    example = tasks.make_example(tasks.problem_from_prompt("subtraction", (a, b)), random.Random(seed))
    thinking = example.completion.split("</think>")[0]
    # every step is one fact: a borrow joins the bottom digit first, then one subtraction
    for bottom, total in re.findall(r"(\d) and the borrow make (\d+)\.", thinking):
        assert int(bottom) + 1 == int(total)
    facts = re.findall(r"(\d+) - (\d+) = (\d+)\.(?! Wait)", thinking)  # a slip's wrong value is followed by Wait
    assert len(facts) >= len(str(a))
    for top, take, value in facts:
        assert int(top) - int(take) == int(value)
    # the column values, read from the highest place, are the result's digits (leading zeros kept)
    digits = re.search(r"The digits from the highest place: ([\d, ]+)\.", thinking).group(1)
    assert digits.replace(", ", "") == str(a - b).rjust(len(str(a)), "0")


@settings(max_examples=200, deadline=None)
@given(numbers=st.lists(st.integers(1, 999), min_size=2, max_size=10, unique=True), seed=st.integers(0, 1000))
def test_sorting_trace_takes_the_smallest_of_those_left(numbers, seed):
    example = tasks.make_example(tasks.problem_from_prompt("sorting", tuple(numbers)), random.Random(seed))
    thinking = example.completion.split("</think>")[0]
    names = {n: "abcdefghij"[i] for i, n in enumerate(numbers)}  # each number keeps its letter name
    left, picked = list(numbers), []
    steps = [line for line in thinking.splitlines() if line.startswith("Left:")]
    assert len(steps) == len(numbers)
    for line in steps:
        listed = re.findall(r"([a-z]) (\d+)", re.match(r"Left: ([a-z\d, ]+)\.", line).group(1))
        assert listed == [(names[n], str(n)) for n in left]  # the numbers not taken yet, in the prompt's order
        # a slip names the larger of a pair, then "Wait, ..., so" the smaller: keep the correction
        line = re.sub(r"([a-z] \d+ or [a-z] \d+: [\d=<>, ]+), [a-z] \d+\. Wait, \d+ < \d+, so ([a-z] \d+)\.",
                      r"\1, \2.", line)
        running = listed[0]
        for x, y, digits, kept in re.findall(r"([a-z] \d+) or ([a-z] \d+): ((?:\d [=<>] \d, )+)([a-z] \d+)\.", line):
            assert x == " ".join(running)  # the pair's first is the one kept so far, with its name
            assert kept == min(x, y, key=lambda item: int(item.split()[1]))
            # digit by digit from the highest place (zero-padded), in the pair's order: equal digits,
            # then the first that differ, whose sign says which of the two is smaller
            a, b = (item.split()[1] for item in (x, y))
            width = max(len(a), len(b))
            pairs = re.findall(r"(\d) ([=<>]) (\d)", digits)
            digit_pairs = list(zip(a.rjust(width, "0"), b.rjust(width, "0"), strict=True))
            for (d1, op, d2), (da, db) in zip(pairs, digit_pairs[:len(pairs)], strict=True):
                assert (d1, d2) == (da, db)
                assert op == ("=" if da == db else "<" if da < db else ">")
            assert pairs[-1][1] != "="
            assert kept == (x if pairs[-1][1] == "<" else y)
            running = tuple(kept.split())
        assert int(running[1]) == min(left) and running[0] == names[min(left)]
        assert line.endswith(f"is {running[0]} {running[1]}.")
        picked.append(min(left))
        left.remove(min(left))
    assert picked == sorted(numbers)
    assert f"Check: {' < '.join(map(str, sorted(numbers)))}. Correct." in thinking
    assert example.problem.answer == ", ".join(map(str, sorted(numbers)))


@settings(max_examples=200, deadline=None)
@given(word=st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=18),
       letter=st.sampled_from("abcdefghijklmnopqrstuvwxyz"))
def test_letter_count_trace_spells_and_counts(word, letter):
    example = tasks.make_example(tasks.problem_from_prompt("letter_count", (letter, word)), random.Random(0))
    thinking = example.completion.split("</think>")[0]
    assert f"look for the letter {letter}." in thinking  # the same form (" m") as each spelled letter
    spelled = re.search(r"Letters: (.*)\.\n", thinking).group(1).split(", ")
    assert spelled[-1] == "end"  # the spelling says where the word is over
    spelled = spelled[:-1]
    assert "".join(item[0] for item in spelled) == word
    marks = [int(item[3:-1]) for item in spelled if len(item) > 1]
    assert marks == list(range(1, word.count(letter) + 1))
    assert [item[0] for item in spelled if len(item) > 1] == [letter] * word.count(letter)


# ----------------------------------------------------------------------------- trace styles

def _digest(examples) -> str:
    import hashlib
    import json

    rows = [[e.problem.prompt, e.problem.answer, e.completion, e.slipped] for e in examples]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def test_v1_traces_are_unchanged_and_the_default():
    # hashes of the examples before the v2 style was added: the shipped model's data, byte for byte
    assert _digest(tasks.sample_examples(3000, seed=0)) == \
        "f77ff80de461a0fdc40d5b12cbc7d36c8283b88fd81e9b2c04e1d1b200f50716"
    held = tasks.sample_examples(500, seed=7, levels=tasks.ALL_LEVELS, split="eval")
    assert _digest(held) == "320fe215594125d8f28e2fa1409dbe7476e4b1531f463756e863fc6aff617b3c"
    assert tasks.sample_examples(50, seed=3) == tasks.sample_examples(50, seed=3, style="v1")
    assert all(e.style == "v1" and e.strategy == "" and not e.cut_short for e in held)


def test_unknown_trace_style():
    with pytest.raises(ValueError, match="trace style 'v3' is not known: choose one of v1, v2"):
        tasks.sample_examples(1, seed=0, style="v3")
    with pytest.raises(ValueError, match="trace style 'V2'"):
        tasks.make_example(tasks.problem_from_prompt("addition", (1, 2)), random.Random(0), style="V2")


def _v2(family: str, n: int, seed: int = 0, levels=tasks.TRAIN_LEVELS) -> list[tasks.Example]:
    rng = random.Random(seed)
    return [tasks.make_example(tasks.make_problem(family, rng.choice(levels), rng), rng, style="v2")
            for _ in range(n)]


@pytest.mark.parametrize("family", tasks.FAMILIES)
def test_v2_traces_are_well_formed_and_right_unless_a_slip_went_unnoticed_or_thinking_was_cut(family):
    for example in _v2(family, 400):
        text = example.completion
        assert text.startswith("<think>\n") and text.count("\n</think>\n\n") == 1
        thinking, answer = text[len("<think>\n"):].split("\n</think>\n\n")
        extracted, rule = extract_answer(answer)
        assert rule == "boxed"
        assert example.style == "v2" and example.strategy in tasks.V2_STRATEGIES[family]
        assert tasks.strategy_of(text) == example.strategy
        assert ("Wait," in thinking) == (example.noticed or example.false_alarm)
        assert not (example.noticed and example.false_alarm) and (example.slipped or not example.noticed)
        if not example.cut_short:
            assert sum(thinking.count(c.split(":")[0] + ":") for c in tasks.V2_CHECKS) == 1
        else:
            assert not any(c.split(":")[0] + ":" in thinking for c in tasks.V2_CHECKS)
        if not example.cut_short and not (example.slipped and not example.noticed):
            assert extracted == example.problem.answer, text
        elif not example.cut_short and family != "sorting":
            # an unnoticed slip is carried on to a wrong answer (a sorting slip may be overtaken by a
            # smaller number later in the round)
            assert extracted != example.problem.answer, text


def test_v2_strategy_shares():
    for family in tasks.FAMILIES:
        examples = _v2(family, 2000, seed=1)
        first = sum(e.strategy == tasks.V2_STRATEGIES[family][0] for e in examples) / len(examples)
        assert abs(first - tasks.V2_STRATEGY_SHARES[family]) < 0.04, (family, first)


def test_every_designed_choice_is_a_fork_in_its_context():
    # At T 0.6 / top-p 0.95 an option with ~15% or less is never drawn: each option of every designed
    # choice has at least 20% where it is made (the cut short is not a choice the model should make)
    for family in tasks.FAMILIES:
        options: dict[str, list] = {}
        for example in _v2(family, 1500, seed=2):
            for name, option in example.decisions:
                options.setdefault(name, []).append(option)
        assert set(options) == {"strategy", "plan", "slip", "noticed", "false_alarm", "check", "cut_short"}
        for name, made in options.items():
            if name == "cut_short":
                continue
            shares = {option: made.count(option) / len(made) for option in set(made)}
            assert len(shares) >= 2 and min(shares.values()) >= 0.2, (family, name, shares)
        assert len(set(options["check"])) == len(tasks.V2_CHECKS)


def test_v2_slip_false_alarm_and_cut_short_rates():
    examples = tasks.sample_examples(3000, seed=4, style="v2")
    n = len(examples)
    slipped = [e for e in examples if e.slipped]
    assert 0.15 < len(slipped) / n < 0.3
    unnoticed = sum(not e.noticed for e in slipped) / len(slipped)
    assert 0.18 < unnoticed < 0.32
    assert 0.08 < sum(e.false_alarm for e in examples) / n < 0.25
    assert 0.04 < sum(e.cut_short for e in examples) / n < 0.09
    assert 0.2 < sum("Wait," in e.completion for e in examples) / n < 0.45
    assert 0.3 < sum(("plan", True) in e.decisions for e in examples) / n < 0.5


def test_v2_choice_points_are_located():
    openings = tuple(c.split(":")[0] + ":" for c in tasks.V2_CHECKS)
    for example in tasks.sample_examples(600, seed=5, style="v2"):
        text, offsets = example.completion, example.choice_offsets
        kinds = [kind for kind, _ in offsets]
        assert kinds.count("strategy") == 1 and kinds.count("plan") <= 1 and kinds.count("site") <= 1
        # no plan point only where the thinking was cut right after the strategy sentence
        assert "plan" in kinds or (example.cut_short and text.split("\n")[2] == "</think>")
        for kind, offset in offsets:
            if kind == "strategy":
                assert offset == len("<think>\n") and text[offset:].startswith(tasks.V2_OPENINGS[example.strategy])
            elif kind == "plan":  # the line after the strategy sentence: the plan, or the first step
                assert text[offset - 1] == "\n" and text[offset:].startswith("Plan:") == (("plan", True) in
                                                                                          example.decisions)
            elif kind == "check":
                assert text[offset - 1] == "\n" and text[offset:].startswith(openings)
            else:  # the site: the step has ended in "." and the next token is the fork
                assert text[offset - 1] == "." or text[offset - 3:offset] == ". "
                assert text[offset:].startswith(" Wait,") == (example.noticed or example.false_alarm)
        # found again from the text alone (as in a sampled trace), the slip site without "Wait" aside
        found = tasks.choice_points(text)
        expected = [(("wait" if kind == "site" else kind), offset) for kind, offset in offsets
                    if kind != "site" or text[offset:].startswith(" Wait")]
        assert found == expected, (text, found, expected)
        if "site" in kinds:
            assert any(name == "slip" for name, _ in example.decisions)


def test_cut_short_traces_answer_from_what_was_reached():
    examples = [e for e in tasks.sample_examples(3000, seed=6, style="v2") if e.cut_short]
    assert len(examples) > 100
    guesses = 0
    for example in examples:
        thinking, answer = example.completion.split("\n</think>\n\n")
        assert extract_answer(answer)[1] == "boxed"
        if answer.startswith("I stopped before the end"):
            guesses += 1
            if example.problem.family == "letter_count":  # the count reached so far
                counted = [line for line in thinking.splitlines() if line.startswith(("Letters:", "Running total:"))]
                numbers = re.findall(r"\d+", counted[-1]) if counted else []
                assert extract_answer(answer)[0] == (numbers[-1] if numbers else "0")
            if example.problem.family == "linear_equation" and "So x = " in thinking:  # the x read off
                assert extract_answer(answer)[0] == re.findall(r"So x = (\d+)", thinking)[-1]
            if example.problem.family == "sorting":  # every number once
                got = [int(n) for n in extract_answer(answer)[0].split(", ")]
                assert sorted(got) == sorted(example.problem.operands)
        else:  # cut after the result line: the result is the answer
            assert example.problem.family == "sorting" or extract_answer(answer)[0] in thinking.splitlines()[-1]
    assert 0.5 < guesses / len(examples) < 1


def test_v1_traces_are_read_as_v1():
    for example in tasks.sample_examples(60, seed=8):
        assert tasks.strategy_of(example.completion) == "v1"
        assert tasks.choice_points(example.completion)[0] == ("strategy", len("<think>\n"))


@settings(max_examples=300, deadline=None)
@given(a=st.integers(0, 10**6), b=st.integers(0, 10**6), seed=st.integers(0, 1000))
def test_counting_up_jumps_are_one_digit_each_and_add_up(a, b, seed):
    a, b = max(a, b), min(a, b)
    steps = tasks._count_up_steps(a, b)
    assert sum(end - start for start, end in steps) == a - b
    for start, end in steps:
        assert str(end - start).strip("0") in "123456789" and len(str(end - start).strip("0")) == 1
    # and the trace's arithmetic holds unless the one slip went unnoticed
    example = tasks.make_example(tasks.problem_from_prompt("subtraction", (a, b)), random.Random(seed), style="v2")
    if not (example.slipped and not example.noticed) and not example.cut_short:
        assert extract_answer(example.completion.split("</think>")[1])[0] == str(a - b)


@settings(max_examples=300, deadline=None)
@given(family=st.sampled_from(["addition", "multiplication"]), a=st.integers(0, 99999), b=st.integers(2, 999),
       seed=st.integers(0, 1000))
def test_v2_arithmetic_is_right_unless_a_slip_went_unnoticed(family, a, b, seed):
    example = tasks.make_example(tasks.problem_from_prompt(family, (a, b)), random.Random(seed), style="v2")
    got = extract_answer(example.completion.split("</think>")[1])[0]
    if example.cut_short:
        return
    assert (got == example.problem.answer) == (not example.slipped or example.noticed), example.completion


def test_v2_level_weights_set_how_often_each_training_level_is_drawn(monkeypatch):
    from collections import Counter

    even = Counter(e.problem.level for e in tasks.sample_examples(600, seed=2, style="v2"))
    v1 = [e.completion for e in tasks.sample_examples(200, seed=2)]
    assert all(150 <= even[level] <= 250 for level in tasks.TRAIN_LEVELS), even
    monkeypatch.setitem(tasks.V2_LEVEL_WEIGHTS, 3, 4.0)  # level 3 four times as likely as each other level
    heavy = Counter(e.problem.level for e in tasks.sample_examples(600, seed=2, style="v2"))
    assert heavy[3] > 2.5 * heavy[1] and heavy[3] > 2.5 * heavy[2], heavy
    assert [e.completion for e in tasks.sample_examples(200, seed=2)] == v1  # v1 ignores them
