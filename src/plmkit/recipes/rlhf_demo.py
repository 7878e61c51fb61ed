"""`plm rlhf-demo recipes/rlhf/demo.yaml` / `make rlhf`: the ChatGPT pipeline end to end on a CPU in a
few minutes, on a synthetic verifiable task (additions "3+8=" -> "11", plmkit.prompting.arithmetic):

    data       <run>/data: pre-training text (paragraphs of the Python language reference that ships with
               CPython, and optionally equations "3+8=11"), SFT rows, prompts, verifier-labelled pairs
    tokenizer  byte-level BPE learnt on the text without its digits (each digit stays one token)
    pretrain   plm pretrain: a small GPT from random weights on the pre-training text
    sft        plm sft: prompt -> answer rows (prompt_completion; the demo's template: the prompt as it
               is, then the answer and EOS)
    reward     plm reward from the SFT model, on pairs labelled by the verifier: the right sum over a
               plausible mistake, and right over wrong among the SFT model's own samples
    ppo        plm ppo: the SFT model against the reward model, KL to the SFT model, PTX on the
               pre-training text (ptx.coef; optionally a second run with ptx.coef=0 to compare)
    plot       <run>/rlhf.png: reward, verifier accuracy, KL and the pre-training loss over PPO steps

Every stage is the ordinary recipe with its own run folder under <run>/ and its settings from the demo
YAML's section of the same name (any key of that recipe). A new demo needs an empty run folder
(--overwrite moves an old one aside).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from plmkit.config import from_dict
from plmkit.config.fields import Range
from plmkit.errors import ConfigError
from plmkit.files import atomic_file, make_folder
from plmkit.prompting import arithmetic
from plmkit.recipes.runs import plan_run_folder, prepare_run_folder

STAGES = ("pretrain", "sft", "reward", "ppo")


@dataclass
class TaskSection:
    """The synthetic data (plmkit.prompting.arithmetic), every split from its own seed."""

    digits: Annotated[int, Range(ge=1, le=4)] = 1  # operands below 10**digits
    pretrain_equations: Annotated[int, Range(ge=0)] = 0  # equation lines of the pre-training text
    pretrain_paragraphs: Annotated[int, Range(ge=0)] = 3000  # Python-reference lines beside them
    sft_rows: Annotated[int, Range(ge=1)] = 4000
    synthetic_pairs: Annotated[int, Range(ge=0)] = (
        6000  # right sum vs another number (arithmetic.wrong_answer)
    )
    sampled_prompts: Annotated[int, Range(ge=0)] = 300  # prompts whose SFT samples are labelled too
    samples_per_prompt: Annotated[int, Range(ge=2)] = 4
    ppo_prompts: Annotated[int, Range(ge=1)] = 2000
    dev_prompts: Annotated[int, Range(ge=1)] = 200
    vocab_size: Annotated[int, Range(ge=300)] = 512


@dataclass
class RlhfDemoConfig:
    name: str = "rlhf"
    out_dir: str = "runs/{name}"
    seed: Annotated[int, Range(ge=0)] = 0
    task: TaskSection = field(default_factory=TaskSection)
    pretrain: dict[str, Any] = field(default_factory=dict)  # plm pretrain's keys
    sft: dict[str, Any] = field(default_factory=dict)  # plm sft's keys
    reward: dict[str, Any] = field(default_factory=dict)  # plm reward's keys
    ppo: dict[str, Any] = field(default_factory=dict)  # plm ppo's keys
    compare_ptx: bool = False  # also run PPO with ptx.coef=0 (same steps) and plot both
    resume: bool | str = False
    overwrite: bool = False

    @property
    def run_dir(self) -> str:
        return self.out_dir.format(name=self.name)


def validate(config: RlhfDemoConfig) -> None:
    if config.resume:
        raise ConfigError("plm rlhf-demo does not resume; start it again with --overwrite")
    for stage in STAGES:
        stage_config(config, stage, {})  # every section's keys are that recipe's


def check(config: RlhfDemoConfig):
    validate(config)
    return plan_run_folder(config)


# ---- the stages' configs ---------------------------------------------------------------------------------
def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = (
            _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def stage_config(config: RlhfDemoConfig, stage: str, paths: dict[str, Any]) -> Any:
    """The stage's recipe config: its demo section, then the paths the demo fills in."""
    from plmkit.recipes import RECIPES

    cls = RECIPES[stage].load_config_class()
    fixed = {"name": stage, "out_dir": str(Path(config.run_dir) / "{name}"), "seed": config.seed}
    data = _merged(_merged(fixed, getattr(config, stage)), paths)
    return from_dict(cls, data, path=stage)


# ---- data -------------------------------------------------------------------------------------------------
def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    with atomic_file(path) as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows).encode())
    return path


def write_data(config: RlhfDemoConfig, folder: Path) -> dict[str, Path]:
    """The demo's files (see the module docstring); each split has its own seed."""
    from plmkit.recipes.demo import write_default_corpus

    t, seed = config.task, config.seed
    make_folder(folder, "demo data folder")
    reference = write_default_corpus(folder).read_text(encoding="utf-8").splitlines()
    paragraphs = [line for line in reference if line.strip()][: t.pretrain_paragraphs]
    equations = [
        f"{r['prompt']}{r['completion']}"
        for r in arithmetic.sft_rows(t.pretrain_equations, seed + 1, t.digits)
    ]
    lines = [*equations, *paragraphs]
    import random

    random.Random(seed).shuffle(lines)
    pretrain = folder / "pretrain.txt"
    with atomic_file(pretrain) as f:
        f.write(("\n".join(lines) + "\n").encode())

    def prompts(n: int, s: int) -> list[dict[str, str]]:
        return [
            {"prompt": r["prompt"], "answer": r["completion"]} for r in arithmetic.sft_rows(n, s, t.digits)
        ]

    return {
        "pretrain": pretrain,
        "sft": write_jsonl(folder / "sft.jsonl", arithmetic.sft_rows(t.sft_rows, seed + 2, t.digits)),
        "pairs": write_jsonl(
            folder / "pairs.jsonl", arithmetic.preference_pairs(t.synthetic_pairs, seed + 3, t.digits)
        ),
        "pairs_dev": write_jsonl(
            folder / "pairs-dev.jsonl", arithmetic.preference_pairs(200, seed + 4, t.digits)
        ),
        "ppo_prompts": write_jsonl(folder / "prompts.jsonl", prompts(t.ppo_prompts, seed + 5)),
        "dev_prompts": write_jsonl(folder / "prompts-dev.jsonl", prompts(t.dev_prompts, seed + 6)),
    }


def train_tokenizer(config: RlhfDemoConfig, text: Path, folder: Path) -> Path:
    """Byte-level BPE of the text with its digits removed: no merge joins digits, so every number is
    written digit by digit (a model adds digits, not arbitrary number pieces)."""
    from plmkit.tokenizer import Tokenizer

    digit_free = [re.sub(r"\d", "", line) for line in text.read_text(encoding="utf-8").splitlines()]
    tokenizer = Tokenizer.train(digit_free, kind="bpe", vocab_size=config.task.vocab_size, family="gpt2")
    tokenizer.save(folder)
    return folder


def sampled_pairs(config: RlhfDemoConfig, sft_checkpoint: str, seed: int) -> list[dict[str, str]]:
    """Verifier-labelled pairs among the SFT model's own samples (right over wrong, per prompt)."""
    from plmkit.generation import GenerationConfig
    from plmkit.io import load
    from plmkit.prompting.chat import ChatTemplate, chat_prompt_ids
    from plmkit.recipes.rollouts import sample_rollouts

    t = config.task
    if not t.sampled_prompts:
        return []
    model, tokenizer = load(sft_checkpoint)
    template = ChatTemplate(tokenizer.chat_template)
    problems = arithmetic.problems(t.sampled_prompts, seed, t.digits)
    ids = [chat_prompt_ids(tokenizer, [{"role": "user", "content": p.prompt}], template) for p in problems]
    sampling = GenerationConfig(do_sample=True, max_new_tokens=t.digits + 3, eos_token_id=tokenizer.eos_id)
    rollouts = sample_rollouts(model, ids, sampling, n=t.samples_per_prompt, seed=seed, batch_size=256)
    texts = [tokenizer.decode(r, skip_special_tokens=True) for r in rollouts.responses()]
    n = t.samples_per_prompt
    pairs = []
    for i, p in enumerate(problems):
        pairs.extend(arithmetic.label_pairs(p.prompt, texts[i * n : (i + 1) * n]))
    return pairs


# ---- the plot ---------------------------------------------------------------------------------------------
def plot(runs: dict[str, Path], path: Path) -> Path | None:
    """rlhf.png: reward, verifier accuracy, KL and pre-training loss per PPO step (one line per run)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from plmkit.train.logging import read_metrics

    panels = [
        ("reward (reward model, sampled)", ["reward"]),
        ("verifier accuracy", ["accuracy", "dev_accuracy"]),
        ("KL to the SFT model (per completion)", ["kl"]),
        ("pre-training loss (nats / token)", ["ptx_loss", "ptx_dev_loss"]),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for ax, (title, keys) in zip(axes.flat, panels, strict=True):
        for label, run in runs.items():
            rows = read_metrics(run / "metrics.jsonl")
            for key in keys:
                points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
                if points:
                    style = "o-" if key.startswith(("dev_", "ptx_dev")) else "-"
                    ax.plot(*zip(*points), style, label=f"{label}: {key}", linewidth=1, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("PPO step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---- the demo ---------------------------------------------------------------------------------------------
def rlhf_demo(config: RlhfDemoConfig, stream=None) -> dict[str, Any]:
    from plmkit.recipes.ppo import ppo
    from plmkit.recipes.pretrain import pretrain
    from plmkit.recipes.reward import reward
    from plmkit.recipes.sft import sft

    plan = check(config)
    prepare_run_folder(plan)
    run_dir = Path(config.run_dir)
    make_folder(run_dir, "run folder")
    say = (
        (lambda text: print(text, file=stream, flush=True))
        if stream
        else (lambda text: print(text, flush=True))
    )
    files = write_data(config, run_dir / "data")
    tokenizer = train_tokenizer(config, files["pretrain"], run_dir / "tokenizer")
    say(f"== pretrain ({run_dir / 'pretrain'})")
    pre = pretrain(
        stage_config(
            config,
            "pretrain",
            {"tokenizer": {"path": str(tokenizer)}, "data": {"sources": [{"path": str(files["pretrain"])}]}},
        )
    )
    say(f"== sft ({run_dir / 'sft'})")
    sft_out = sft(
        stage_config(
            config,
            "sft",
            {
                "init_from": pre["checkpoint"],
                "data": {"train": str(files["sft"]), "format": "prompt_completion"},
            },
        )
    )
    pairs = files["pairs"]
    extra = sampled_pairs(config, sft_out["checkpoint"], config.seed + 7)
    if extra:
        rows = [json.loads(line) for line in pairs.read_text().splitlines()] + extra
        write_jsonl(pairs, rows)
    say(f"== reward ({run_dir / 'reward'}): {len(extra)} pairs from the SFT model's samples")
    rm = reward(
        stage_config(
            config, "reward",
            {"init_from": sft_out["checkpoint"], "data": {"train": str(pairs), "dev": str(files["pairs_dev"])}},
        )
    )  # fmt: skip
    paths = {
        "init_from": sft_out["checkpoint"],
        "reward_model": rm["checkpoint"],
        "data": {"train": str(files["ppo_prompts"]), "dev": str(files["dev_prompts"])},
        "ptx": {"data": {"sources": [{"path": str(files["pretrain"])}]}},
        "verifier": [{"function": "arithmetic"}],
    }
    say(f"== ppo ({run_dir / 'ppo'})")
    result = ppo(stage_config(config, "ppo", paths))
    runs = {"ppo": run_dir / "ppo"}
    no_ptx = None
    if config.compare_ptx:
        say(f"== ppo without ptx ({run_dir / 'ppo-no-ptx'})")
        no_ptx = ppo(
            stage_config(config, "ppo", _merged(paths, {"name": "ppo-no-ptx", "ptx": {"coef": 0.0}}))
        )
        runs["ppo-no-ptx"] = run_dir / "ppo-no-ptx"
    figure = plot(runs, run_dir / "rlhf.png")
    summary = {
        "pretrain": {k: pre.get(k) for k in ("checkpoint", "val_loss", "val_ppl")},
        "sft": {"checkpoint": sft_out["checkpoint"]},
        "reward": {
            "checkpoint": rm["checkpoint"],
            **{k: v for k, v in rm.items() if "accuracy" in k or k == "dev"},
        },
        "ppo": {k: result[k] for k in ("checkpoint", "dev_start", "dev", "kl_coef", "train_seconds")},
        **({"ppo_no_ptx": {k: no_ptx[k] for k in ("dev_start", "dev", "train_seconds")}} if no_ptx else {}),
        "plot": str(figure) if figure else None,
    }
    with atomic_file(run_dir / "summary.json") as f:
        f.write((json.dumps(summary, indent=1) + "\n").encode())
    start, end = result["dev_start"], result["dev"]
    kl = [r["kl"] for r in _rows(run_dir / "ppo") if "kl" in r]
    say(
        f"verifier accuracy (greedy, {config.task.dev_prompts} dev prompts): {start.get('dev_accuracy', 0):.3f} (SFT) "
        f"-> {end.get('dev_accuracy', 0):.3f} (PPO); KL to the SFT model per completion: "
        f"{kl[0] if kl else 0:.3f} -> {kl[-1] if kl else 0:.3f}; pre-training loss {start.get('ptx_dev_loss', 0):.3f} "
        f"-> {end.get('ptx_dev_loss', 0):.3f}"
        + (f" (ptx.coef=0: -> {no_ptx['dev'].get('ptx_dev_loss', 0):.3f})" if no_ptx else "")
    )
    if figure:
        say(f"plot: {figure}")
    return summary


def _rows(run: Path) -> list[dict[str, Any]]:
    from plmkit.train.logging import read_metrics

    return read_metrics(run / "metrics.jsonl")
