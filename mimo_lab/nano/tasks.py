"""MiMo-nano's world: seeded problems with verifiable answers, and reasoning traces to learn from.

Six families, each with difficulty levels 1–5. Levels 1–3 are the training difficulty; 4 and 5
go beyond it (more digits, longer lists, longer words), where the trained model really fails.

A target trace reads like a reasoning model's: `<think>`, steps in words and digits, a check,
and sometimes a slip followed by "Wait, ..." and its correction; then `</think>` and a short
answer ending in `\\boxed{...}`. Slips are frequent (and the model learns to make them) where
the digits 7 and 8 meet, rare elsewhere, so some greedy traces backtrack too.

A tenth of all problems (by a hash of family and operands) is held out: training never draws
them, evaluation draws only them, so measured accuracy is on problems never seen in training.
"""

from __future__ import annotations

import hashlib
import random
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


def make_example(problem: Problem, rng: random.Random) -> Example:
    """The target completion for a problem: `<think>\\n...\\n</think>\\n\\nanswer`."""
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


def sample_examples(n: int, seed: int, *, levels=TRAIN_LEVELS, families=FAMILIES, split="train") -> list[Example]:
    """n examples (families drawn by TRAIN_WEIGHTS, levels uniformly), reproducible from the seed."""
    for family in families:
        for level in levels:
            _check_family_level(family, level)
    rng = random.Random(seed)
    families = list(families)
    weights = [TRAIN_WEIGHTS[f] for f in families]
    out = []
    for _ in range(n):
        family = rng.choices(families, weights)[0]
        problem = make_problem(family, rng.choice(list(levels)), rng, split=split)
        out.append(make_example(problem, rng))
    return out


def eval_problems(per_cell: int, seed: int = 1234, *, levels=ALL_LEVELS, families=FAMILIES) -> list[Problem]:
    """Held-out problems: `per_cell` for every (family, level), none of them ever trained on."""
    rng = random.Random(seed)
    return [make_problem(f, lvl, rng, split="eval") for f in families for lvl in levels for _ in range(per_cell)]
