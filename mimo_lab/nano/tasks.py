"""MiMo-nano's world: seeded problems with verifiable answers, and reasoning traces to learn from.

Six families, each with difficulty levels 1–5. Levels 1–3 are the training difficulty; 4 and 5
go beyond it (more digits, longer lists, longer words), where the trained model really fails.

A target trace reads like a reasoning model's: `<think>`, steps in words and digits, a check,
and sometimes a slip followed by "Wait, ..." and its correction; then `</think>` and a short
answer ending in `\\boxed{...}`. Slips are frequent (and the model learns to make them) where
the digits 7 and 8 meet, rare elsewhere, so some greedy traces backtrack too. That is trace style
"v1", the shipped model's and the default. Style "v2" (`make_example_v2`, `mimo-lab nano train
--traces v2`) gives every family two strategies, an optional plan, three check phrasings, one slip
site per trace (a slip noticed with "Wait" or not, or a false alarm) and traces cut short, each
choice with at least 20% where it is made, so that sampling really forks there.

A tenth of all problems (by a hash of family and operands) is held out: training never draws
them, evaluation draws only them, so measured accuracy is on problems never seen in training.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field

FAMILIES = ("addition", "subtraction", "multiplication", "linear_equation", "letter_count", "sorting")
TRAIN_LEVELS = (1, 2, 3)
ALL_LEVELS = (1, 2, 3, 4, 5)
PLACES = ("Ones", "Tens", "Hundreds", "Thousands", "Ten-thousands", "Hundred-thousands", "Millions",
          "Ten-millions", "Hundred-millions")

HARD_SLIP_RATE = 0.6  # chance of a slip at a step where 7 and 8 meet (above 1/2: greedy slips too)
RANDOM_SLIP_RATE = 0.08  # chance that a trace slips at one random step elsewhere

# Digits of the operands by level (addition / subtraction: the longer operand's digit count).
_ADD_DIGITS = {1: 2, 2: 3, 3: 4, 4: 5, 5: 6}
# Multiplication: (digits of the first factor, digits of the second).
_MUL_DIGITS = {1: (2, 1), 2: (3, 1), 3: (2, 2), 4: (3, 2), 5: (3, 3)}
# Linear equation a*x + b = c: ranges of a, x, b.
_EQ_RANGES = {1: (5, 5, 9), 2: (9, 9, 20), 3: (9, 12, 30), 4: (19, 50, 99), 5: (49, 99, 999)}
# Letter counting: word length range.
_WORD_LENGTHS = {1: (3, 5), 2: (5, 7), 3: (7, 10), 4: (11, 14), 5: (15, 18)}
# Sorting: (list length range, largest number).
_SORT_SIZES = {1: ((3, 3), 20), 2: ((4, 4), 50), 3: ((5, 5), 99), 4: ((7, 8), 999), 5: ((9, 10), 999)}
# How often each family is drawn in training: the ones that need more facts get more examples.
TRAIN_WEIGHTS = {"addition": 1.1, "subtraction": 1.1, "multiplication": 1.1, "linear_equation": 1.0,
                 "letter_count": 2.3, "sorting": 1.2}
# v2 traces: more of the families retrain v2b got wrong most (multiplication, sorting's insertion); this is
# retrain v2c's mix, the best so far (benchmarks/RESULTS.md).
V2_TRAIN_WEIGHTS = {"addition": 1.2, "subtraction": 1.1, "multiplication": 1.5, "linear_equation": 1.2,
                    "letter_count": 2.1, "sorting": 1.6}
# v2 traces: how often each training level is drawn (equal weights: uniformly, as v1 and v2c). Retrain v2d
# tried {1: 0.5, 2: 1.0, 3: 1.4} with more weight on addition, subtraction and letter counting: worse.
V2_LEVEL_WEIGHTS = {1: 1.0, 2: 1.0, 3: 1.0}

_WORDS = """
cat dog sun map cup red bee egg owl ant box fox jar key pen hat zoo ink
apple berry lemon melon grape olive peach mango onion bread chair table plant river stone
cloud storm ocean beach tiger zebra horse sheep mouse eagle robin piano radio
banana cherry orange carrot garden pepper butter rabbit turtle monkey parrot pencil window
rocket planet silver yellow purple summer winter spring autumn bottle bubble pillow kitten
strawberry blueberry raspberry pineapple butterfly alligator crocodile dinosaur elephant kangaroo
mississippi tennessee committee bookkeeper successful assessment possession parallel
umbrella sandwich triangle mountain hospital computer keyboard notebook calendar elevator
chocolate telephone newspaper adventure basketball volleyball skateboard helicopter
""".split()
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Problem:
    """One problem: its family, level, operands, prompt and the exact answer (a string)."""

    family: str
    level: int
    operands: tuple
    prompt: str
    answer: str
    uid: str = field(default="")


@dataclass(frozen=True)
class Example:
    """A problem with its target completion (thinking + answer), as the model should write it."""

    problem: Problem
    completion: str
    slipped: bool
    # v2 traces (style="v2") fill these; a v1 trace keeps the defaults.
    style: str = "v1"
    strategy: str = ""  # the strategy the trace's first sentence chose (V2_STRATEGIES)
    noticed: bool = False  # the slip was followed by "Wait, ..." and corrected
    false_alarm: bool = False  # "Wait, let me check ... yes, that is right." where nothing was wrong
    cut_short: bool = False  # thinking ends part-way; the answer is what was reached
    # The designed choices made, in order, as (name, option): ("strategy", "column"), ("plan", True),
    # ("check", 2), ("slip", False), ("false_alarm", True), ("noticed", True), ("cut_short", False).
    decisions: tuple = ()
    # (kind, character offset in `completion`) of the designed choice points: "strategy", "plan",
    # "site" (where "Wait" or going on is chosen: also in traces that went on), "check".
    choice_offsets: tuple = ()


def _check_family_level(family: str, level: int) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown task family {family!r}: choose one of {', '.join(FAMILIES)}")
    if level not in ALL_LEVELS:
        raise ValueError(f"difficulty level {level!r} out of range: levels are 1–5 (1–3 = training difficulty)")


def _uid(family: str, operands: tuple) -> str:
    return hashlib.sha1(f"{family}:{operands!r}".encode()).hexdigest()[:12]


def is_held_out(family: str, operands: tuple) -> bool:
    """True for the tenth of problems reserved for evaluation (never drawn in training)."""
    return int(_uid(family, operands), 16) % 10 == 0


def _rand_digits(rng: random.Random, digits: int) -> int:
    return rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1)


def _pseudo_word(rng: random.Random, length: int) -> str:
    # Alternate consonant-ish and vowel-ish runs so pseudo-words look like words.
    vowels, consonants = "aeiou", "bcdfghjklmnprstvwy"
    return "".join(rng.choice(vowels if i % 2 else consonants) if rng.random() < 0.8 else rng.choice(_LETTERS)
                   for i in range(length))


def _draw_operands(family: str, level: int, rng: random.Random) -> tuple:
    if family in ("addition", "subtraction"):
        digits = _ADD_DIGITS[level]
        a = _rand_digits(rng, digits)
        b = _rand_digits(rng, rng.randint(1, digits))
        if family == "subtraction" and b > a:
            a, b = b, a
        return (a, b)
    if family == "multiplication":
        da, db = _MUL_DIGITS[level]
        return (_rand_digits(rng, da), max(2, _rand_digits(rng, db)))
    if family == "linear_equation":
        a_max, x_max, b_max = _EQ_RANGES[level]
        a, x, b = rng.randint(2, a_max), rng.randint(1, x_max), rng.randint(1, b_max)
        minus = level >= 3 and rng.random() < 0.5 and a * x > b
        return (a, -b if minus else b, a * x + (-b if minus else b))
    if family == "letter_count":
        lo, hi = _WORD_LENGTHS[level]
        real = [w for w in _WORDS if lo <= len(w) <= hi]
        word = rng.choice(real) if real and rng.random() < 0.3 else _pseudo_word(rng, rng.randint(lo, hi))
        letter = rng.choice(word) if rng.random() < 0.8 else rng.choice(_LETTERS)
        return (letter, word)
    (lo, hi), largest = _SORT_SIZES[level]
    return tuple(rng.sample(range(1, largest + 1), rng.randint(lo, hi)))


_PROMPTS = {
    "addition": ("What is {a} + {b}?", "Compute {a} + {b}.", "What is the sum of {a} and {b}?", "Add {a} and {b}."),
    "subtraction": ("What is {a} - {b}?", "Compute {a} - {b}.", "Subtract {b} from {a}.",
                    "What is {a} minus {b}?"),
    "multiplication": ("What is {a} * {b}?", "Compute {a} * {b}.", "What is the product of {a} and {b}?",
                       "Multiply {a} by {b}."),
    "linear_equation": ("Solve for x: {eq}", "Find x if {eq}.", "What is x in {eq}?"),
    "letter_count": ("How many times does the letter '{l}' appear in '{w}'?", "Count the letter '{l}' in '{w}'.",
                     "How many '{l}'s are in '{w}'?"),
    "sorting": ("Sort these numbers: {items}", "Sort {items} from smallest to largest.",
                "Put these numbers in increasing order: {items}"),
}


def _equation_text(a: int, b: int, c: int) -> str:
    return f"{a}x {'+' if b >= 0 else '-'} {abs(b)} = {c}"


def _prompt_and_answer(family: str, operands: tuple, rng: random.Random) -> tuple[str, str]:
    template = rng.choice(_PROMPTS[family])
    if family in ("addition", "subtraction", "multiplication"):
        a, b = operands
        value = {"addition": a + b, "subtraction": a - b, "multiplication": a * b}[family]
        return template.format(a=a, b=b), str(value)
    if family == "linear_equation":
        a, b, c = operands
        return template.format(eq=_equation_text(a, b, c)), str((c - b) // a)
    if family == "letter_count":
        letter, word = operands
        return template.format(l=letter, w=word), str(word.count(letter))
    return template.format(items=", ".join(map(str, operands))), ", ".join(map(str, sorted(operands)))


def make_problem(family: str, level: int, rng: random.Random, *, split: str = "train") -> Problem:
    """Draw one problem. split="train" never returns a held-out problem; "eval" returns only those."""
    _check_family_level(family, level)
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    for _ in range(10_000):
        operands = _draw_operands(family, level, rng)
        if is_held_out(family, operands) == (split == "eval"):
            prompt, answer = _prompt_and_answer(family, operands, rng)
            return Problem(family, level, operands, prompt, answer, _uid(family, operands))
    raise RuntimeError(f"could not draw a {split} problem for {family} level {level}")


def problem_from_prompt(family: str, operands: tuple, level: int = 2) -> Problem:
    """A Problem for given operands (prompt = the first phrasing), e.g. for fixed test prompts."""
    _check_family_level(family, level)
    prompt, answer = _prompt_and_answer(family, operands, _FirstChoice())
    return Problem(family, level, tuple(operands), prompt, answer, _uid(family, tuple(operands)))


class _FirstChoice(random.Random):
    def choice(self, seq):  # noqa: D102 - deterministic first phrasing
        return seq[0]


# ----------------------------------------------------------------------------- traces


class _Slipper:
    """Decides where a trace slips. At most one slip per trace."""

    def __init__(self, rng: random.Random, steps: int):
        self.rng = rng
        self.random_step = rng.randrange(steps) if steps and rng.random() < RANDOM_SLIP_RATE else -1
        self.step = -1
        self.used = False

    def should_slip(self, hard: bool) -> bool:
        self.step += 1
        if self.used:
            return False
        if (hard and self.rng.random() < HARD_SLIP_RATE) or self.step == self.random_step:
            self.used = True
            return True
        return False


def _digits_rev(n: int) -> list[int]:
    return [int(d) for d in reversed(str(n))]


def _is_hard(*digits: int) -> bool:
    return 7 in digits and 8 in digits


def _column_add(numbers: list[int], slipper: _Slipper) -> tuple[list[str], int]:
    """Column addition of several numbers, right to left. Returns (lines, total)."""
    cols = max(len(str(n)) for n in numbers)
    rev = [_digits_rev(n) + [0] * (cols - len(str(n))) for n in numbers]
    lines, carry, written = [], 0, []
    for i in range(cols):
        terms = [r[i] for r in rev]
        total = sum(terms) + carry
        expr = " + ".join(map(str, terms)) + (f" + {carry}" if carry else "")
        write, new_carry = total % 10, total // 10
        rest = f"write {write}" + (f", carry {new_carry}." if new_carry else ".")
        if slipper.should_slip(_is_hard(*terms)):
            wrong = total - 1
            lines.append(f"{PLACES[i]}: {expr} = {wrong}. Wait, {expr} = {total}, not {wrong}. So {rest}")
        else:
            lines.append(f"{PLACES[i]}: {expr} = {total}, {rest}")
        written.append(write)
        carry = new_carry
    if carry:
        lines.append(f"{PLACES[cols]}: the carry {carry}, write {carry}.")
    return lines, sum(numbers)


def _trace_addition(a: int, b: int, rng: random.Random) -> tuple[str, str, bool]:
    slipper = _Slipper(rng, max(len(str(a)), len(str(b))))
    lines, total = _column_add([a, b], slipper)
    think = [f"I add {a} and {b} column by column, from the right.", *lines,
             f"So {a} + {b} = {total}.", f"Check: {total} - {b} = {a}. Correct."]
    return "\n".join(think), f"{a} + {b} = \\boxed{{{total}}}.", slipper.used


def _column_sub(a: int, b: int, slipper: _Slipper) -> list[str]:
    """Column subtraction a - b (a >= b), right to left. A borrow is added to the next bottom
    digit first ("7 and the borrow make 8"), so every step is one fact; the last line reads the
    result's digits back from the highest place."""
    cols = len(str(a))
    ra, rb = _digits_rev(a), _digits_rev(b) + [0] * (cols - len(str(b)))
    lines, borrow, digits = [], 0, []
    for i in range(cols):
        top, bottom = ra[i], rb[i]
        take = bottom + borrow
        head = f"{PLACES[i]}: " + (f"{bottom} and the borrow make {take}. " if borrow else "")
        need = top < take
        value = top - take + (10 if need else 0)
        shown = f"1{top} - {take}" if need else f"{top} - {take}"
        prefix = f"{head}{top} - {take} needs a borrow, " if need else head
        if value > 0 and slipper.should_slip(_is_hard(top, bottom)):
            lines.append(f"{prefix}{shown} = {value - 1}. Wait, {shown} = {value}, not {value - 1}.")
        else:
            lines.append(f"{prefix}{shown} = {value}.")
        digits.append(value)
        borrow = 1 if need else 0
    lines.append(f"The digits from the highest place: {', '.join(map(str, reversed(digits)))}.")
    return lines


def _trace_subtraction(a: int, b: int, rng: random.Random) -> tuple[str, str, bool]:
    slipper = _Slipper(rng, len(str(a)))
    lines = _column_sub(a, b, slipper)
    think = [f"I subtract {b} from {a} column by column, from the right.", *lines,
             f"So {a} - {b} = {a - b}.", f"Check: {a - b} + {b} = {a}. Correct."]
    return "\n".join(think), f"{a} - {b} = \\boxed{{{a - b}}}.", slipper.used


def _trace_multiplication(a: int, b: int, rng: random.Random) -> tuple[str, str, bool]:
    rb = _digits_rev(b)
    slipper = _Slipper(rng, len(str(a)) * len(rb))
    think = [f"I multiply {a} by {b}, one digit of {b} at a time."]
    parts = []
    for place, digit in enumerate(rb):
        steps, carry = [], 0
        for d in _digits_rev(a):
            product = d * digit
            total = product + carry
            # the times-table fact first, then the carry added: "3 * 9 + 4 = 27 + 4 = 31"
            expr = f"{d} * {digit}" + (f" + {carry} = {product} + {carry}" if carry else "")
            write, new_carry = total % 10, total // 10
            rest = f"write {write}" + (f", carry {new_carry}." if new_carry else ".")
            if not carry and slipper.should_slip(_is_hard(d, digit)):
                steps.append(f"{d} * {digit} = {total - 1}. Wait, {d} * {digit} = {total}, not {total - 1}. So {rest}")
            else:
                steps.append(f"{expr} = {total}, {rest}")
            carry = new_carry
        if carry:
            steps.append(f"Write the carry {carry}.")
        partial = a * digit
        line = f"{a} * {digit}: " + " ".join(steps) + f" That gives {partial}"
        if place:
            shifted = partial * 10**place
            line += f", shifted {place} place{'s' if place > 1 else ''}: {shifted}"
            partial = shifted
        parts.append(partial)
        think.append(line + ".")
    product = a * b
    if len(parts) > 1:
        think.append("Add the parts: " + " + ".join(map(str, parts)) + ".")
        lines, _ = _column_add(parts, slipper)
        think.extend(lines)
    last = (a % 10) * (b % 10)
    think += [f"So {a} * {b} = {product}.",
              f"Check: the last digits give {a % 10} * {b % 10} = {last}, which ends in {last % 10}, "
              f"and {product} ends in {product % 10}. Correct."]
    return "\n".join(think), f"{a} * {b} = \\boxed{{{product}}}.", slipper.used


def _trace_linear_equation(a: int, b: int, c: int, rng: random.Random) -> tuple[str, str, bool]:
    rhs = c - b
    x = rhs // a
    slipper = _Slipper(rng, len(str(max(c, rhs))) + 1)
    if b >= 0:
        move = f"Subtract {b} from both sides: {a}x = {c} - {b}."
        columns = _column_sub(c, b, slipper)
    else:
        move = f"Add {-b} to both sides: {a}x = {c} + {-b}."
        columns, _ = _column_add([c, -b], slipper)
    if slipper.should_slip(False):
        divide = (f"Divide both sides by {a}: x = {rhs} / {a} = {x + 1}. Wait, {a} * {x + 1} = {a * (x + 1)}, "
                  f"not {rhs}. So x = {x}, because {a} * {x} = {rhs}.")
    else:
        divide = f"Divide both sides by {a}: x = {rhs} / {a} = {x}, because {a} * {x} = {rhs}."
    think = [f"I need x in {_equation_text(a, b, c)}.", move, *columns, f"So {a}x = {rhs}.", divide,
             f"Check: {a} * {x} {'+' if b >= 0 else '-'} {abs(b)} = {a * x} {'+' if b >= 0 else '-'} {abs(b)} = {c}. "
             "Correct."]
    return "\n".join(think), f"x = \\boxed{{{x}}}.", slipper.used


def _trace_letter_count(letter: str, word: str, rng: random.Random) -> tuple[str, str, bool]:
    # The letter looked for and every spelled letter are written the same way (" m"), so
    # spotting it in the spelling is matching one token against another.
    count, items = 0, []
    for ch in word:
        if ch == letter:
            count += 1
            items.append(f"{ch} ({count})")
        else:
            items.append(ch)
    times = f"time{'' if count == 1 else 's'}"
    # The spelling ends with "end", written where the next letter would be: finding the next
    # letter and finding that the word is over are then the same look-up, one token after a comma.
    think = [f"I spell '{word}' and look for the letter {letter}.", "Letters: " + ", ".join([*items, "end"]) + ".",
             f"The letter {letter} appears {count} {times}."]
    if count:
        think.append(f"Check: {', '.join([letter] * count)} makes {count}. Correct.")
    else:
        think.append(f"Check: no {letter} in the spelling, so 0. Correct.")
    return "\n".join(think), f"The letter '{letter}' appears \\boxed{{{count}}} {times}.", False


def _sort_label(index: int) -> str:
    """a, b, ..., z, then aa, ab, ...: a one-token name for each number of the list."""
    return _LETTERS[index] if index < len(_LETTERS) else _sort_label(index // len(_LETTERS) - 1) + _LETTERS[index % 26]


def _compare_digits(x: int, y: int) -> str:
    """Two numbers compared digit by digit from the highest place (the shorter one padded with
    zeros), each pair of digits in the pair's order: "3 = 3, 5 > 4" for 35 and 34, "0 < 2" for 6
    and 27. Every step is one digit against one, and the sign that decides says which of the two
    is smaller: "<" the first, ">" the second."""
    width = max(len(str(x)), len(str(y)))
    steps = []
    for dx, dy in zip(str(x).rjust(width, "0"), str(y).rjust(width, "0"), strict=True):
        steps.append(f"{dx} {'=' if dx == dy else '<' if dx < dy else '>'} {dy}")
        if dx != dy:
            break
    return ", ".join(steps)


def _trace_sorting(numbers: tuple, rng: random.Random) -> tuple[str, str, bool]:
    # Selection sort in the open: list the numbers left, keep the smaller of each pair, take the
    # smallest out, repeat. Each number keeps a letter name ("c 28"), so taking one out and
    # copying the rest is matching a one-token name, not a two-digit number that may share its
    # first digit with another. A pair is compared digit by digit, in the pair's order, before the
    # smaller is named ("a 35 or d 34: 3 = 3, 5 > 4, d 34"): every decision is one digit against
    # one, and the sign then says which of the two to name.
    named = {n: _sort_label(i) for i, n in enumerate(numbers)}
    left, ordered = list(numbers), []
    slipper = _Slipper(rng, len(numbers) * (len(numbers) - 1) // 2)

    def item(n: int) -> str:
        return f"{named[n]} {n}"

    think = ["I sort them from smallest to largest, taking the smallest of those left each time."]
    while len(left) > 1:
        parts, best = [f"Left: {', '.join(map(item, left))}."], left[0]
        for n in left[1:]:
            small, big = min(best, n), max(best, n)
            compared = f"{item(best)} or {item(n)}: {_compare_digits(best, n)}"
            if slipper.should_slip(False) and small != big:
                parts.append(f"{compared}, {item(big)}. Wait, {small} < {big}, so {item(small)}.")
            else:
                parts.append(f"{compared}, {item(small)}.")
            best = small
        parts.append(f"{'Next' if ordered else 'The smallest'} is {item(best)}.")
        think.append(" ".join(parts))
        ordered.append(best)
        left.remove(best)
    think.append(f"Left: {item(left[0])}. The last is {item(left[0])}.")
    ordered.append(left[0])
    think.append(f"Check: {' < '.join(map(str, ordered))}. Correct.")
    return "\n".join(think), f"Sorted: \\boxed{{{', '.join(map(str, ordered))}}}.", slipper.used


def make_example(problem: Problem, rng: random.Random, style: str = "v1") -> Example:
    """The target completion for a problem: `<think>\\n...\\n</think>\\n\\nanswer`.

    style: "v1" (the shipped model's traces: one strategy) or "v2" (several strategies, check
    phrasings, slips noticed or not, false alarms, thinking cut short; see `make_example_v2`)."""
    _check_style(style)
    if style == "v2":
        return make_example_v2(problem, rng)
    ops, family = problem.operands, problem.family
    if family == "addition":
        think, answer, slipped = _trace_addition(*ops, rng)
    elif family == "subtraction":
        think, answer, slipped = _trace_subtraction(*ops, rng)
    elif family == "multiplication":
        think, answer, slipped = _trace_multiplication(*ops, rng)
    elif family == "linear_equation":
        think, answer, slipped = _trace_linear_equation(*ops, rng)
    elif family == "letter_count":
        think, answer, slipped = _trace_letter_count(*ops, rng)
    else:
        think, answer, slipped = _trace_sorting(ops, rng)
    return Example(problem, f"<think>\n{think}\n</think>\n\n{answer}", slipped)


def sample_examples(n: int, seed: int, *, levels=TRAIN_LEVELS, families=FAMILIES, split="train",
                    style: str = "v1") -> list[Example]:
    """n examples, reproducible from the seed: families drawn by TRAIN_WEIGHTS and levels uniformly
    (v1), or by V2_TRAIN_WEIGHTS and V2_LEVEL_WEIGHTS (v2).
    style: the trace style: "v1" (the shipped model's; today's examples exactly) or "v2"."""
    _check_style(style)
    for family in families:
        for level in levels:
            _check_family_level(family, level)
    rng = random.Random(seed)
    families = list(families)
    weights = [(V2_TRAIN_WEIGHTS if style == "v2" else TRAIN_WEIGHTS)[f] for f in families]
    levels = list(levels)
    level_weights = [V2_LEVEL_WEIGHTS.get(level, 1.0) for level in levels]
    uneven = style == "v2" and len(set(level_weights)) > 1
    out = []
    for _ in range(n):
        family = rng.choices(families, weights)[0]
        level = rng.choices(levels, level_weights)[0] if uneven else rng.choice(levels)  # equal: v2c's draws
        problem = make_problem(family, level, rng, split=split)
        out.append(make_example(problem, rng, style))
    return out


def eval_problems(per_cell: int, seed: int = 1234, *, levels=ALL_LEVELS, families=FAMILIES) -> list[Problem]:
    """Held-out problems: `per_cell` for every (family, level), none of them ever trained on."""
    rng = random.Random(seed)
    return [make_problem(f, lvl, rng, split="eval") for f in families for lvl in levels for _ in range(per_cell)]


# ----------------------------------------------------------------------------- v2 traces
#
# A v2 trace has the choices a reasoning model forks at, and only those: which strategy (the first
# sentence), whether to say a plan, at one step whether to slip, whether to notice a slip ("Wait,
# ...") or raise a false alarm, and how to phrase the check. Every other token follows from what is
# already written, and every step stays one fact (benchmarks/RESULTS.md: sorted numbers keep letter
# names, a borrow joins the bottom digit first, the spelling ends in "end").
#
# Sampling at temperature 0.6 and top-p 0.95 never draws an option the model gives ~15% or less, so
# each option below has at least ~25% in its own context. The slip site is one step per trace,
# which the model can recognise from what is written: the first step whose digits include a 7 or
# an 8 (arithmetic), reading x off the times table (ax + b = c; dividing has none), the first letter that matches
# (spelling, tallying), the first comparison (sorting). At the site the step always ends in "."
# and the next token is the fork: " Wait" (a slip noticed, or a false alarm) or going on. A slipped
# number is one step off either way (never a number the step reads: copying one is a shortcut), so
# the slip's 30% is split between two values and the right value stays greedy decoding's clear
# choice (retrain v2a, with 35% on one value, slipped greedily: benchmarks/RESULTS.md). The
# strategies' sentences differ from their first token on: that token is the fork.

TRACE_STYLES = ("v1", "v2")
V2_STRATEGIES = {
    "addition": ("column", "place_value"),
    "subtraction": ("borrow", "count_up"),
    "multiplication": ("digits_of_second", "digits_of_first"),
    "linear_equation": ("divide", "times_table"),
    "letter_count": ("spell", "tally"),
    "sorting": ("selection", "insertion"),
}
V2_STRATEGY_SHARE = 0.5  # the first strategy's share (the second gets the rest), unless V2_STRATEGY_SHARES says
# A family's own share of its first strategy: greedy decoding takes the likelier strategy, so where one is
# the sturdier, the design leans to it. `ax + b = c` leans to dividing (the times table walks up to 12
# steps at level 3 and loses its target: retrain v2g, greedy on the times table, 82% at level 3),
# subtraction to borrowing (retrain v2h, greedy counting up: 88 / 93 / 94%, zero-length jumps such as
# "From 40 up to 40 is 0" lose the count), letter counting to spelling (the tally misses a final letter:
# v2f). At T 0.6 a 60/40 design samples about 66/34, so the second strategy stays a real choice.
V2_STRATEGY_SHARES = {family: V2_STRATEGY_SHARE for family in V2_STRATEGIES} | {
    "linear_equation": 0.6, "subtraction": 0.6, "letter_count": 0.6}
V2_PLAN_RATE = 0.4  # a plan sentence after the strategy sentence
V2_SLIP_RATE = 0.25  # at the slip site: a wrong value (a number: one step off either way, so each ~12%)
V2_NOTICE_RATE = 0.75  # a slip followed by "Wait, ..." and its correction (else it goes on, wrong)
V2_FALSE_ALARM_RATE = 0.25  # at the slip site without a slip: "Wait, let me check ... yes, that is right."
V2_CUT_SHORT_RATE = 0.06  # thinking cut at a line boundary before the check, then an answer from what was reached
V2_CHECKS = ("Check: {}. Correct.", "Let me verify: {}. Yes, that is right.", "To be sure: {}. It checks out.")
V2_CUT_ANSWER = "I stopped before the end; from what I reached: \\boxed{{{}}}."
_SITE, _CHECK_MARK, _PLAN_MARK = "\x01", "\x02", "\x03"  # placeholders for the choice offsets, removed


_V2_DESCRIPTIONS = {
    "column": "column by column from the right, with carries",
    "place_value": "each place's parts summed (thousands, hundreds, ...), then the parts added",
    "borrow": "column by column, borrowing where the top digit is smaller",
    "count_up": "counting up from the smaller number in round jumps, then adding the jumps",
    "digits_of_second": "one row per digit of the second factor, rows added",
    "digits_of_first": "the factors turned round: one row per digit of the first factor",
    "divide": "x term alone, then divide (\"x = 30 / 3 = 10\")",
    "times_table": "x term alone, then up the times table to the right-hand side",
    "spell": "every letter spelled, each match numbered (\"r (1)\")",
    "tally": "a running total written after every letter (\"s 0, t 0, r 1, ...\")",
    "selection": "the smallest of those left, again and again",
    "insertion": "each number inserted into a sorted list",
}


def v2_design_markdown() -> str:
    """The v2 trace design as Markdown (the model card's "How it thinks"): strategies, phrasings, rates."""
    rows = ["| task | strategy (opening words) | how | share |", "|---|---|---|---|"]
    for family, (first, second) in V2_STRATEGIES.items():
        share_first = V2_STRATEGY_SHARES[family]
        for name, share in ((first, share_first), (second, 1 - share_first)):
            rows.append(f"| {family} | {name} (\"{V2_OPENINGS[name]}\") | {_V2_DESCRIPTIONS[name]} | {share:.0%} |")
    checks = "; ".join(f"\"{c.format('...')}\"" for c in V2_CHECKS)
    return "\n".join([
        *rows, "",
        f"- A plan sentence after the strategy sentence in {V2_PLAN_RATE:.0%} of traces.",
        "- One slip site per trace (the first step whose digits include a 7 or an 8; reading x off the times "
        "table, none when dividing; the first matching letter; the first comparison). There: a slip in "
        f"{V2_SLIP_RATE:.0%} (a number one step off either way, never one the step reads; a letter passed over; "
        f"the larger number picked), noticed with \"Wait, ...\" and corrected in {V2_NOTICE_RATE:.0%} of slips and "
        f"carried on to a wrong answer in the rest; without a slip, a false alarm (\"Wait, let me check: ..., yes, "
        f"that is right.\") in {V2_FALSE_ALARM_RATE:.0%}.",
        f"- The check, in one of {len(V2_CHECKS)} phrasings: {checks}",
        f"- {V2_CUT_SHORT_RATE:.0%} of traces cut short at a line boundary, answering from what was reached "
        f"(\"{V2_CUT_ANSWER.format('...')}\"), unless the result line was reached.",
        "- At the card's sampling (T 0.6, top-p 0.95) an option with p in its context is drawn with about "
        "p^(1/0.6) / sum over options: 50% stays 50%, 40% becomes 34%, 25% becomes 14%.",
    ])


def _check_style(style: str) -> None:
    if style not in TRACE_STYLES:
        raise ValueError(f"trace style {style!r} is not known: choose one of {', '.join(TRACE_STYLES)}")


class _Site:
    """The one step of a v2 trace where it may slip or raise a false alarm: the first eligible step."""

    def __init__(self, rng: random.Random):
        self.rng, self.event, self.decisions = rng, None, []

    def visit(self, eligible: bool) -> str | None:
        """None if this step is not the site; else "plain", "false_alarm", "noticed" or "unnoticed"."""
        if self.event is not None or not eligible:
            return None
        slip = self.rng.random() < V2_SLIP_RATE
        self.decisions.append(("slip", slip))
        if slip:
            noticed = self.rng.random() < V2_NOTICE_RATE
            self.decisions.append(("noticed", noticed))
            self.event = "noticed" if noticed else "unnoticed"
        else:
            alarm = self.rng.random() < V2_FALSE_ALARM_RATE
            self.decisions.append(("false_alarm", alarm))
            self.event = "false_alarm" if alarm else "plain"
        return self.event

    def wrong(self, right: int, unit: int = 1, avoid=(), most: int | None = None) -> int:
        """The slipped value: `unit` above or below `right`, never negative and never a number the
        step reads (`avoid`: copying an operand would be a shortcut to a 'slip'), so the slip's
        share is split between two values and the right one stays the clear favourite under greedy
        decoding."""
        options = [v for v in (right - unit, right + unit)
                   if v >= 0 and v not in avoid and (most is None or v <= most)]
        options = options or [right - unit if right >= unit else right + unit]
        return options[0] if len(options) == 1 else self.rng.choice(options)


class _NoSlips(_Slipper):
    def __init__(self):
        self.used = False

    def should_slip(self, hard: bool) -> bool:  # noqa: D102
        return False


_NEVER_SLIPS = _NoSlips()


def _has_7_or_8(*numbers: int) -> bool:
    return any(d in "78" for n in numbers for d in str(n))


def _fact(site: _Site, eligible: bool, expr: str, right: int, rest, *, sep: str = ", ", unit: int = 1,
          avoid=(), most: int | None = None) -> tuple[str, int]:
    """One fact `expr = value` and what follows from the value (`rest(value)`, e.g. "write 5, carry 1.").
    At the site the value may be wrong (a slip, `_Site.wrong`): "Wait, ..." corrects it, or it goes
    on, wrong. Returns (text, the value the trace goes on with)."""
    event = site.visit(eligible)
    if event is None:
        return f"{expr} = {right}{sep}{rest(right)}", right
    wrong = site.wrong(right, unit, avoid, most)
    if event == "noticed":
        return f"{expr} = {wrong}.{_SITE} Wait, {expr} = {right}, not {wrong}. So {rest(right)}", right
    if event == "false_alarm":
        return (f"{expr} = {right}.{_SITE} Wait, let me check: {expr} = {right}, yes, that is right. "
                f"So {rest(right)}"), right
    value = wrong if event == "unnoticed" else right
    return f"{expr} = {value}.{_SITE} So {rest(value)}", value


def _v2_add_up(lines: list[str], values: list[int], site: _Site, what: str) -> tuple[list[str], int]:
    """`lines`, then "Add the {what}: ..." and the values added in columns; one value needs no sum."""
    if len(values) == 1:
        return lines, values[0]
    lines.append(f"Add the {what}: " + " + ".join(map(str, values)) + ".")
    column_lines, total = _v2_column_add(values, site)
    return lines + column_lines, total


def _left(numbers: list[int], i: int, cols: int) -> str:
    """" Left: 499 and 0." after column i of a two-number column sum: what is left of each number, so
    the next column reads each number's last digit (by content) rather than its i-th from the right."""
    if len(numbers) != 2 or i + 1 >= cols:
        return ""
    return " Left: " + " and ".join(str(n // 10 ** (i + 1)) for n in numbers) + "."


def _v2_column_add(numbers: list[int], site: _Site) -> tuple[list[str], int]:
    """Column addition, right to left (v1's lines; the site's step may slip). Returns (lines, the
    total the lines reach: wrong after an unnoticed slip)."""
    cols = max(len(str(n)) for n in numbers)
    rev = [_digits_rev(n) + [0] * (cols - len(str(n))) for n in numbers]
    lines, carry, reached = [], 0, 0
    for i in range(cols):
        terms = [r[i] for r in rev]
        expr = " + ".join(map(str, terms)) + (f" + {carry}" if carry else "")

        def rest(total: int) -> str:
            return f"write {total % 10}" + (f", carry {total // 10}." if total // 10 else ".")

        text, total = _fact(site, _has_7_or_8(*terms), expr, sum(terms) + carry, rest, avoid=(*terms, carry))
        lines.append(f"{PLACES[i]}: {text}" + _left(numbers, i, cols))
        reached += (total % 10) * 10**i
        carry = total // 10
    if carry:
        lines.append(f"{PLACES[cols]}: the carry {carry}, write {carry}.")
        reached += carry * 10**cols
    return lines, reached


def _v2_place_value_add(a: int, b: int, site: _Site) -> tuple[list[str], int]:
    """Addition by place value: each place's parts summed (one digit fact with its zeros), from the
    highest place down, then the parts added in columns."""
    cols = max(len(str(a)), len(str(b)))
    ra, rb = _digits_rev(a) + [0] * (cols - len(str(a))), _digits_rev(b) + [0] * (cols - len(str(b)))
    lines, parts = [], []
    for i in reversed(range(cols)):
        unit = 10**i
        text, value = _fact(site, _has_7_or_8(ra[i], rb[i]), f"{ra[i] * unit} + {rb[i] * unit}",
                            (ra[i] + rb[i]) * unit, lambda v: "", sep=".", unit=unit,
                            avoid=(ra[i] * unit, rb[i] * unit))
        lines.append(f"{PLACES[i]}: {text.removesuffix('So ').rstrip()}")
        parts.append(value)
    kept = [p for p in parts if p] or [0]
    return _v2_add_up(lines, kept, site, "parts")


def _v2_borrow_sub(a: int, b: int, site: _Site) -> tuple[list[str], int]:
    """v1's column subtraction (a borrow joins the bottom digit first); the site's step may slip."""
    cols = len(str(a))
    ra, rb = _digits_rev(a), _digits_rev(b) + [0] * (cols - len(str(b)))
    lines, borrow, digits = [], 0, []
    for i in range(cols):
        top, bottom = ra[i], rb[i]
        take = bottom + borrow
        head = f"{PLACES[i]}: " + (f"{bottom} and the borrow make {take}. " if borrow else "")
        need = top < take
        shown = f"1{top} - {take}" if need else f"{top} - {take}"
        prefix = f"{head}{top} - {take} needs a borrow, " if need else head
        value = top - take + (10 if need else 0)
        text, value = _fact(site, _has_7_or_8(top, bottom), shown, value, lambda v: "", sep=".",
                            avoid=(top, take), most=9)
        lines.append(f"{prefix}{text.removesuffix('So ').rstrip()}" + _left([a, b], i, cols))
        digits.append(value)
        borrow = 1 if need else 0
    lines.append(f"The digits from the highest place: {', '.join(map(str, reversed(digits)))}.")
    return lines, int("".join(map(str, reversed(digits))))


def _count_up_steps(a: int, b: int) -> list[tuple[int, int]]:
    """(from, to) jumps counting up from b to a: to the next ten, hundred, ... while that stays at or
    below a, then down a's places. Each jump is one digit times a power of ten."""
    x, p, steps = b, 0, []
    while 10 ** (p + 1) <= a:
        unit = 10 ** (p + 1)
        if x % unit:
            nxt = (x // unit + 1) * unit
            if nxt > a:
                break
            steps.append((x, nxt))
            x = nxt
        p += 1
    for q in reversed(range(len(str(a)))):
        target = a // 10**q * 10**q
        if target > x:
            steps.append((x, target))
            x = target
    return steps


def _v2_count_up_sub(a: int, b: int, site: _Site) -> tuple[list[str], int]:
    """Subtraction by counting up from the smaller number, then adding the jumps."""
    steps = _count_up_steps(a, b)
    if not steps:
        return [f"From {b} up to {a} is 0."], 0
    lines, jumps = [], []
    for start, end in steps:
        jump = end - start
        lead = int(str(jump)[0])
        unit = 10 ** (len(str(jump)) - 1)
        moved = start // unit % 10  # the digit of `start` at the jump's place
        event = site.visit(_has_7_or_8(lead, moved))
        wrong = site.wrong(jump, unit, avoid=(0,)) if event else jump
        if event == "noticed":
            lines.append(f"From {start} up to {end} is {wrong}.{_SITE} Wait, from {start} up to {end} is {jump}, "
                         f"not {wrong}.")
        elif event == "false_alarm":
            lines.append(f"From {start} up to {end} is {jump}.{_SITE} Wait, let me check: {start} + {jump} = {end}, "
                         "yes, that is right.")
        else:
            value = wrong if event == "unnoticed" else jump
            lines.append(f"From {start} up to {end} is {value}." + (_SITE if event else ""))
            jump = value
        jumps.append(jump)
    return _v2_add_up(lines, jumps, site, "jumps")


def _v2_long_multiply(top: int, bottom: int, site: _Site) -> tuple[list[str], int]:
    """`top` times one digit of `bottom` at a time (each row a times-table fact plus a carry), rows
    shifted and added in columns."""
    lines, parts = [], []
    for place, digit in enumerate(_digits_rev(bottom)):
        steps, carry, row = [], 0, 0
        for index, d in enumerate(_digits_rev(top)):
            product = d * digit
            expr = f"{d} * {digit}" + (f" + {carry} = {product} + {carry}" if carry else "")

            def rest(total: int) -> str:
                return f"write {total % 10}" + (f", carry {total // 10}." if total // 10 else ".")

            text, total = _fact(site, not carry and _has_7_or_8(d, digit), expr, product + carry, rest,
                                avoid=(d, digit))
            steps.append(text)
            row += (total % 10) * 10**index
            carry = total // 10
        if carry:
            steps.append(f"Write the carry {carry}.")
            row += carry * 10 ** len(str(top))
        line = f"{top} * {digit}: " + " ".join(steps) + f" That gives {row}"
        if place:
            row *= 10**place
            line += f", shifted {place} place{'s' if place > 1 else ''}: {row}"
        parts.append(row)
        lines.append(line + ".")
    return _v2_add_up(lines, parts, site, "parts")


def _v2_read_x(site: _Site, a: int, rhs: int, x: int, lead: str, reason: str) -> tuple[str, int]:
    """The step that reads x off (ax = rhs), `lead` + the value: the slip site of `ax + b = c`."""
    event = site.visit(True)
    wrong = site.wrong(x, avoid=(0, a, rhs)) if event else x
    if event == "noticed":
        return (f"{lead}{wrong}.{_SITE} Wait, {a} * {wrong} = {a * wrong}, not {rhs}. So x = {x}, "
                f"because {a} * {x} = {rhs}."), x
    if event == "false_alarm":
        return f"{lead}{x}.{_SITE} Wait, let me check: {a} * {x} = {rhs}, yes, that is right.", x
    value = wrong if event == "unnoticed" else x
    return f"{lead}{value}.{_SITE}" + ("" if event == "unnoticed" else f" {reason}"), value


def _v2_linear(a: int, b: int, c: int, strategy: str, site: _Site) -> tuple[list[str], int]:
    rhs, x = c - b, (c - b) // a
    if b >= 0:
        lines = [f"Subtract {b} from both sides: {a}x = {c} - {b}."]
        lines += _column_sub(c, b, _NEVER_SLIPS)  # v1's columns: the slip site is reading x off
    else:
        lines = [f"Add {-b} to both sides: {a}x = {c} + {-b}."]
        lines += _column_add([c, -b], _NEVER_SLIPS)[0]
    lines.append(f"So {a}x = {rhs}.")
    if strategy == "divide":
        # v1's line, and no slip site: a division is one look-up the model must get right (retrain
        # v2b, with a 30% slip to x - 1 or x + 1 there, read x off one too low greedily)
        return lines + [f"Divide both sides by {a}: x = {rhs} / {a} = {x}, because {a} * {x} = {rhs}."], x
    # tens first when x has two digits (a * 10, a * 20, ...), so a walk stays short
    steps = [*range(10, x + 1, 10), *range(x // 10 * 10 + 1, x + 1)] if x >= 10 else range(1, x + 1)
    walk = ", ".join(f"{a} * {k} = {a * k}" for k in steps)
    lines.append(f"Up the {a} times table to {rhs}: {walk}.")
    text, value = _v2_read_x(site, a, rhs, x, "So x = ", f"{a} * {x} = {rhs} is the one.")
    return lines + [text], value


def _v2_spell(letter: str, word: str, site: _Site) -> tuple[list[str], int]:
    count, items = 0, []
    for ch in word:
        if ch != letter:
            items.append(ch)
            continue
        event = site.visit(True)
        if event in (None, "plain"):
            count += 1
            items.append(f"{ch} ({count})" + ("." + _SITE + " Then" if event else ""))
        elif event == "noticed":
            count += 1
            items.append(f"{ch}.{_SITE} Wait, that is the letter {letter}: {ch} ({count}). Then")
        elif event == "false_alarm":
            count += 1
            items.append(f"{ch} ({count}).{_SITE} Wait, let me check: that is the letter {letter}, yes. Then")
        else:  # unnoticed: the match goes by unmarked
            items.append(f"{ch}.{_SITE} Then")
    text = ", ".join([*items, "end"]).replace(" Then, ", " Then ")
    times = f"time{'' if count == 1 else 's'}"
    return ["Letters: " + text + ".", f"The letter {letter} appears {count} {times}."], count


def _v2_tally(letter: str, word: str, site: _Site) -> tuple[list[str], int]:
    """A running total written after every letter ("s 0, t 0, r 1, ..."): the site is the first
    match, where an unnoticed slip leaves the total where it was."""
    total, items = 0, []
    for ch in word:
        if ch != letter:
            items.append(f"{ch} {total}")
            continue
        event = site.visit(True)
        total += event != "unnoticed"
        if event is None:
            items.append(f"{ch} {total}")
        elif event == "noticed":
            items.append(f"{ch} {total - 1}.{_SITE} Wait, that is the letter {letter}: {ch} {total}. Then")
        elif event == "false_alarm":
            items.append(f"{ch} {total}.{_SITE} Wait, let me check: that is the letter {letter}, yes. Then")
        else:  # plain, or unnoticed (the total stayed where it was)
            items.append(f"{ch} {total}.{_SITE} Then")
    text = ", ".join(items).replace(" Then, ", " Then ")
    text = text.removesuffix(" Then") if text.endswith(" Then") else text + "."  # the site ends the list
    times = f"time{'' if total == 1 else 's'}"
    return ["Running total: " + text, f"The letter {letter} appears {total} {times}."], total


def _v2_smaller(site: _Site, named: dict, x: int, y: int) -> tuple[str, int]:
    """'a 35 or d 34: 3 = 3, 5 > 4, d 34.' and the number named smaller (the larger after an unnoticed slip)."""
    def item(n: int) -> str:
        return f"{named[n]} {n}"

    small, big = min(x, y), max(x, y)
    compared = f"{item(x)} or {item(y)}: {_compare_digits(x, y)}"
    event = site.visit(True)
    if event == "noticed":
        return f"{compared}, {item(big)}.{_SITE} Wait, {small} < {big}, so {item(small)}.", small
    if event == "false_alarm":
        return f"{compared}, {item(small)}.{_SITE} Wait, let me check: {small} < {big}, yes, {item(small)}.", small
    value = big if event == "unnoticed" else small
    return f"{compared}, {item(value)}." + (_SITE if event else ""), value


def _v2_selection(numbers: tuple, site: _Site) -> tuple[list[str], list[int]]:
    named = {n: _sort_label(i) for i, n in enumerate(numbers)}
    left, ordered, lines = list(numbers), [], []
    while len(left) > 1:
        parts, best = [f"Left: {', '.join(f'{named[n]} {n}' for n in left)}."], left[0]
        for n in left[1:]:
            text, best = _v2_smaller(site, named, best, n)
            parts.append(text)
        parts.append(f"{'Next' if ordered else 'The smallest'} is {named[best]} {best}.")
        lines.append(" ".join(parts))
        ordered.append(best)
        left.remove(best)
    lines.append(f"Left: {named[left[0]]} {left[0]}. The last is {named[left[0]]} {left[0]}.")
    return lines, ordered + left


def _v2_insertion(numbers: tuple, site: _Site) -> tuple[list[str], list[int]]:
    # Each new number is compared with the sorted list from its smallest end until it is the smaller
    # of a pair, and goes in there ("at the end" when it never is).
    named = {n: _sort_label(i) for i, n in enumerate(numbers)}

    def listed(items: list[int]) -> str:
        return ", ".join(f"{named[n]} {n}" for n in items)

    ordered, lines = [numbers[0]], [f"Start with {named[numbers[0]]} {numbers[0]}."]
    for n in numbers[1:]:
        parts, where = [f"Insert {named[n]} {n}:"], len(ordered)
        for index, m in enumerate(ordered):
            text, smaller = _v2_smaller(site, named, n, m)
            parts.append(text)
            if smaller == n:
                where = index
                break
        if where == len(ordered):
            parts.append("At the end.")
        ordered.insert(where, n)
        parts.append(f"List: {listed(ordered)}.")
        lines.append(" ".join(parts))
    return lines, ordered


_V2_PLANS = {
    "column": "Plan: each column with its carry, then check by subtracting.",
    "place_value": "Plan: add the thousands, hundreds, tens and ones apart, then add the parts.",
    "borrow": "Plan: each column, borrowing where the top digit is smaller, then check by adding.",
    "count_up": "Plan: jump to round numbers up to the larger one, then add the jumps.",
    "digits_of_second": "Plan: one row for each digit of the second factor, then add the rows.",
    "digits_of_first": "Plan: one row for each digit of the first factor, then add the rows.",
    "divide": "Plan: get the x term alone, then divide.",
    "times_table": "Plan: get the x term alone, then find x in the times table.",
    "spell": "Plan: write out every letter and mark each match.",
    "tally": "Plan: write the total so far after every letter.",
    "selection": "Plan: find the smallest, take it out, and repeat.",
    "insertion": "Plan: keep a sorted list and put each number in its place.",
}


def _v2_strategy_sentence(family: str, strategy: str, ops: tuple) -> str:
    # The strategies' sentences differ from their first word: that token is the fork.
    if family == "addition":
        a, b = ops
        return (f"Column by column from the right: I add {a} and {b}." if strategy == "column" else
                f"By place value: I add {a} and {b} as thousands, hundreds, tens and ones.")
    if family == "subtraction":
        a, b = ops
        return (f"Borrowing column by column: I subtract {b} from {a}." if strategy == "borrow" else
                f"Counting up: I go from {b} up to {a}.")
    if family == "multiplication":
        a, b = ops
        return (f"Row by row: I multiply {a} by each digit of {b}." if strategy == "digits_of_second" else
                f"Turning it round: I multiply {b} by each digit of {a}.")
    if family == "linear_equation":
        a, b, c = ops
        return (f"Dividing: I need x in {_equation_text(a, b, c)}." if strategy == "divide" else
                f"Times table: I need x in {_equation_text(a, b, c)}.")
    if family == "letter_count":
        letter, word = ops
        return (f"Spelling: I spell '{word}' and look for the letter {letter}." if strategy == "spell" else
                f"Tallying: I keep a running total of the letter {letter} through '{word}'.")
    return ("Selection: I take the smallest of those left each time." if strategy == "selection" else
            "Insertion: I put each number into a sorted list.")


def _v2_body(family: str, strategy: str, ops: tuple, site: _Site) -> tuple[list[str], str, str, str]:
    """(step lines, the result line, what the check states, the answer text) for one strategy."""
    if family == "addition":
        a, b = ops
        lines, total = (_v2_column_add([a, b], site) if strategy == "column" else _v2_place_value_add(a, b, site))
        return lines, f"So {a} + {b} = {total}.", f"{total} - {b} = {a}", f"{a} + {b} = \\boxed{{{total}}}."
    if family == "subtraction":
        a, b = ops
        lines, result = _v2_borrow_sub(a, b, site) if strategy == "borrow" else _v2_count_up_sub(a, b, site)
        return lines, f"So {a} - {b} = {result}.", f"{result} + {b} = {a}", f"{a} - {b} = \\boxed{{{result}}}."
    if family == "multiplication":
        a, b = ops
        lines, product = (_v2_long_multiply(a, b, site) if strategy == "digits_of_second"
                          else _v2_long_multiply(b, a, site))
        last = (a % 10) * (b % 10)
        check = (f"the last digits give {a % 10} * {b % 10} = {last}, which ends in {last % 10}, "
                 f"and {product} ends in {product % 10}")
        return lines, f"So {a} * {b} = {product}.", check, f"{a} * {b} = \\boxed{{{product}}}."
    if family == "linear_equation":
        a, b, c = ops
        lines, x = _v2_linear(a, b, c, strategy, site)
        sign = "+" if b >= 0 else "-"
        check = f"{a} * {x} {sign} {abs(b)} = {a * x} {sign} {abs(b)} = {c}"
        return lines, f"The answer is x = {x}.", check, f"x = \\boxed{{{x}}}."
    if family == "letter_count":
        letter, word = ops
        lines, count = _v2_spell(letter, word, site) if strategy == "spell" else _v2_tally(letter, word, site)
        check = f"{', '.join([letter] * count)} makes {count}" if count else f"no {letter} found, so 0"
        times = f"time{'' if count == 1 else 's'}"
        return lines[:-1], lines[-1], check, f"The letter '{letter}' appears \\boxed{{{count}}} {times}."
    lines, ordered = _v2_selection(ops, site) if strategy == "selection" else _v2_insertion(ops, site)
    text = ", ".join(map(str, ordered))
    return lines, f"Sorted: {text}.", " < ".join(map(str, ordered)), f"Sorted: \\boxed{{{text}}}."


def _cut_guess(family: str, ops: tuple, thinking: str) -> str:
    """The answer a trace cut short gives: what its thinking had reached."""
    if family == "letter_count":
        marks = re.findall(r"\((\d+)\)|[a-z] (\d+)\b", thinking.split("\n", 1)[-1])
        return next((m or t for m, t in reversed(marks)), "0") if marks else "0"
    if family == "sorting":
        lists = re.findall(r"List: ([a-z\d, ]+)\.", thinking)
        placed = ([int(n) for n in re.findall(r"[a-z]+ (\d+)", lists[-1])] if lists else
                  [int(n) for n in re.findall(r"(?:The smallest|Next) is [a-z]+ (\d+)", thinking)])
        return ", ".join(map(str, placed + [n for n in ops if n not in placed]))
    body = thinking.split("\n", 1)[1] if "\n" in thinking else ""
    if family == "linear_equation":  # the x read off, once the trace has one
        read = re.findall(r"(?:So x = |/ \d+ = )(\d+)", body)
        if read:
            return read[-1]
    numbers = re.findall(r"\d+", body)
    return numbers[-1] if numbers else "0"


def make_example_v2(problem: Problem, rng: random.Random) -> Example:
    """A v2 target trace: a strategy sentence (V2_STRATEGIES, V2_STRATEGY_SHARES), an optional plan
    (V2_PLAN_RATE), the strategy's steps with one slip site (V2_SLIP_RATE, V2_NOTICE_RATE,
    V2_FALSE_ALARM_RATE), the result, a check in one of V2_CHECKS; in V2_CUT_SHORT_RATE of traces
    the thinking stops at a line boundary before the check and the answer is what was reached."""
    family, ops = problem.family, problem.operands
    first, second = V2_STRATEGIES[family]
    strategy = first if rng.random() < V2_STRATEGY_SHARES[family] else second
    plan = rng.random() < V2_PLAN_RATE
    site = _Site(rng)
    steps, result, check_text, answer = _v2_body(family, strategy, ops, site)
    check = rng.randrange(len(V2_CHECKS))
    cut = rng.random() < V2_CUT_SHORT_RATE
    decisions = [("strategy", strategy), ("plan", plan), *site.decisions, ("check", check), ("cut_short", cut)]
    lines = [_v2_strategy_sentence(family, strategy, ops) + _PLAN_MARK,
             *([_V2_PLANS[strategy]] if plan else []), *steps, result,
             _CHECK_MARK + V2_CHECKS[check].format(check_text)]
    if cut:
        # cut after the strategy sentence (and plan) at the earliest, before the check at the latest
        lines = lines[:rng.randrange(2 if plan else 1, len(lines))]
        kept = "\n".join(lines)
        if result not in lines:
            answer = V2_CUT_ANSWER.format(_cut_guess(family, ops, kept.translate(_MARKS)))
    raw = "<think>\n" + "\n".join(lines) + "\n</think>\n\n" + answer
    completion, offsets = _strip_marks(raw)
    event = site.event if "site" in dict(offsets) else None
    slipped = event in ("noticed", "unnoticed")
    return Example(problem, completion, slipped, style="v2", strategy=strategy, noticed=event == "noticed",
                   false_alarm=event == "false_alarm", cut_short=cut, decisions=tuple(decisions),
                   choice_offsets=offsets)


_MARKS = {ord(_SITE): None, ord(_CHECK_MARK): None, ord(_PLAN_MARK): None}


def _strip_marks(raw: str) -> tuple[str, tuple]:
    """The completion without the placeholders, and (kind, offset) for each choice point."""
    offsets = [("strategy", len("<think>\n"))]
    text, kinds = [], {_SITE: "site", _CHECK_MARK: "check", _PLAN_MARK: "plan"}
    for ch in raw:
        if ch in kinds:
            # the plan choice is made where the line after the strategy sentence begins (after "\n")
            offsets.append((kinds[ch], len("".join(text)) + (1 if ch == _PLAN_MARK else 0)))
        else:
            text.append(ch)
    text = "".join(text)
    # a trace cut right after its strategy sentence has no line where a plan could begin
    offsets = [(kind, offset) for kind, offset in offsets if not text.startswith("</think>", offset)]
    return text, tuple(sorted(offsets, key=lambda item: item[1]))


_V2_CHECK_OPENINGS = tuple(c.split(":")[0] + ":" for c in V2_CHECKS)


def choice_points(text: str) -> list[tuple[str, int]]:
    """The designed choice points of a v2 trace found in its text (a completion or a sampled trace's
    `text`): (kind, character offset), in order. Kinds: "strategy" (the first word of the thinking),
    "plan" (the start of the next line: a plan sentence or the first step), "wait" (each " Wait":
    a slip noticed or a false alarm) and "check" (the start of the check line). A slip site where the
    trace went on without "Wait" leaves no mark in the text: `Example.choice_offsets` has it."""
    start = text.find("<think>")
    start = 0 if start < 0 else start + len("<think>\n")
    end = text.find("</think>")
    thinking_end = len(text) if end < 0 else end
    points = [("strategy", start)]
    newline = text.find("\n", start)
    if 0 <= newline < thinking_end - 1:
        points.append(("plan", newline + 1))
    points += [("wait", m.start()) for m in re.finditer(r" Wait\b", text[:thinking_end])]
    for m in re.finditer(r"(?m)^(" + "|".join(map(re.escape, _V2_CHECK_OPENINGS)) + ")", text[:thinking_end]):
        points.append(("check", m.start()))
    return sorted(points, key=lambda item: item[1])


# How each strategy's sentence opens (the fork token is its first word); v1 traces open with "I ".
V2_OPENINGS = {"column": "Column by column", "place_value": "By place value", "borrow": "Borrowing",
               "count_up": "Counting up", "digits_of_second": "Row by row", "digits_of_first": "Turning it round",
               "divide": "Dividing", "times_table": "Times table", "spell": "Spelling", "tally": "Tallying",
               "selection": "Selection", "insertion": "Insertion"}


def strategy_of(text: str) -> str | None:
    """The strategy a trace's first sentence names (a completion or a sampled trace's `text`): a
    V2_STRATEGIES name, "v1" for a v1 trace's sentence ("I add ..."), None for anything else."""
    start = text.find("<think>")
    first = text[0 if start < 0 else start + len("<think>"):].lstrip("\n").split("\n", 1)[0]
    for name, opening in V2_OPENINGS.items():
        if first.startswith(opening + ":") or first.startswith(opening + " "):
            return name
    return "v1" if first.startswith("I ") else None
