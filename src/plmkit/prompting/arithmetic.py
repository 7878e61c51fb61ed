"""A synthetic verifiable task for RLHF on a CPU: small additions, checked by a verifier.

    problems(3, seed=0)                       -> [Problem(a=49, b=97), ...]   prompt "49+97=", answer "146"
    reward("49+97=", "146")                   -> 1.0     (0.0 for anything else but surrounding spaces)
    sft_rows(1000, seed=0)                    -> [{"prompt": "49+97=", "completion": "146"}, ...]
    preference_pairs(1000, seed=1)            -> [{"prompt", "chosen", "rejected"}, ...]  (verifier labels)
    label_pairs("49+97=", ["146", "136"])     -> [{"prompt", "chosen": "146", "rejected": "136"}]

The SFT rows are in the `prompt_completion` instruction format that `plm sft` reads; the pairs are the
chosen / rejected rows of `plm reward`. The verifier reads the LAST "a+b=" in the prompt, so a prompt
wrapped in a chat template still verifies. Everything is deterministic given the seed. No torch here.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from plmkit.errors import ConfigError, DataError

PROBLEM = re.compile(r"(\d+)\+(\d+)=")


@dataclass(frozen=True)
class Problem:
    a: int
    b: int

    @property
    def prompt(self) -> str:
        return f"{self.a}+{self.b}="

    @property
    def answer(self) -> str:
        return str(self.a + self.b)


def _check_digits(digits: int) -> None:
    if not 1 <= digits <= 9:
        raise ConfigError(f"digits must be in [1, 9], got {digits}")


def problems(n: int, seed: int = 0, digits: int = 2) -> list[Problem]:
    """`n` additions of two numbers below 10**digits, drawn with `seed`."""
    _check_digits(digits)
    rng = random.Random(seed)
    high = 10**digits - 1
    return [Problem(rng.randint(0, high), rng.randint(0, high)) for _ in range(n)]


def parse_prompt(prompt: str) -> Problem:
    """The problem a prompt asks (its last "a+b="); DataError when it asks none."""
    found = PROBLEM.findall(prompt)
    if not found:
        raise DataError(f"no addition 'a+b=' in the prompt {prompt!r}")
    a, b = found[-1]
    return Problem(int(a), int(b))


def is_correct(prompt: str, completion: str) -> bool:
    """The completion is the sum's digits, nothing else (surrounding whitespace aside)."""
    return completion.strip() == parse_prompt(prompt).answer


def reward(prompt: str, completion: str) -> float:
    """The verifier: 1.0 for the correct sum, else 0.0."""
    return 1.0 if is_correct(prompt, completion) else 0.0


def accuracy(prompts: Sequence[str], completions: Sequence[str]) -> float:
    """The fraction of completions the verifier accepts."""
    if len(prompts) != len(completions) or not prompts:
        raise DataError(f"{len(prompts)} prompts and {len(completions)} completions; give one each (>= 1)")
    return sum(map(is_correct, prompts, completions)) / len(prompts)


def sft_rows(n: int, seed: int = 0, digits: int = 2) -> list[dict[str, str]]:
    """Supervised rows in the prompt_completion format: the prompt and its correct answer."""
    return [{"prompt": p.prompt, "completion": p.answer} for p in problems(n, seed, digits)]


def wrong_answer(problem: Problem, rng: random.Random) -> str:
    """A wrong answer: half the time any other number up to the largest sum of numbers this long (a
    reward model must rank the right sum above all of them), else a plausible mistake: a forgotten
    carry, off by one or ten, two digits swapped, a digit dropped or repeated. Never the right answer."""
    right = problem.a + problem.b
    largest = 2 * (10 ** max(len(str(problem.a)), len(str(problem.b))) - 1)
    if rng.random() < 0.5:
        wrong = rng.randint(0, largest - 1)
        return str(wrong if wrong < right else wrong + 1)  # uniform over the others
    no_carry = int("".join(str((int(x) + int(y)) % 10) for x, y in zip(*_aligned(problem.a, problem.b))))
    text = str(right)
    candidates = [no_carry, right + 1, right - 1, right + 10, right - 10]
    if len(text) > 1:
        i = rng.randrange(len(text) - 1)
        candidates.append(int(text[:i] + text[i + 1] + text[i] + text[i + 2 :]))  # swapped neighbours
        candidates.append(int(text[:-1]))  # last digit dropped
    candidates.append(int(text + text[-1]))  # last digit repeated
    wrong = [c for c in candidates if c != right and c >= 0]
    return str(rng.choice(wrong))


def _aligned(a: int, b: int) -> tuple[str, str]:
    width = max(len(str(a)), len(str(b)))
    return str(a).zfill(width), str(b).zfill(width)


def preference_pairs(n: int, seed: int = 0, digits: int = 2) -> list[dict[str, str]]:
    """Rows of `plm reward`: the correct answer chosen over a plausible wrong one (see wrong_answer)."""
    rng = random.Random(seed + 1_000_003)  # its own stream: the problems equal problems(n, seed)
    return [
        {"prompt": p.prompt, "chosen": p.answer, "rejected": wrong_answer(p, rng)}
        for p in problems(n, seed, digits)
    ]


def label_pairs(prompt: str, completions: Sequence[str]) -> list[dict[str, str]]:
    """Preference pairs among candidate completions of one prompt (e.g. a model's samples), labelled
    by the verifier: every distinct correct one over every distinct wrong one."""
    distinct = list(dict.fromkeys(completions))
    right = [c for c in distinct if is_correct(prompt, c)]
    wrong = [c for c in distinct if not is_correct(prompt, c)]
    return [{"prompt": prompt, "chosen": c, "rejected": r} for c in right for r in wrong]
