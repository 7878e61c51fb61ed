"""trl's side of benchmarks/bench_ppo.py: trl 1.12's PPOTrainer (trl.experimental.ppo), run by the python
of the virtualenv that holds trl 1.12 (it is not plmkit's environment: this file imports nothing of plmkit).

    VENV/bin/python benchmarks/ppo_trl_side.py SETUP.json

bench_ppo.py starts it as a subprocess and talks to it in JSON lines (its requests on stdin, one answer
line each on the original stdout; whatever the libraries print goes to stderr):

    {"check": IN.pt, "out": OUT.pt}  the policy's and the reference's log-probs, the value model's values
                                     and the reward model's scores of fixed query-responses (before training)
    {"train": true}                  starts PPOTrainer.train(); it stops before its first update
    {"step": true}                   one update (rollout + num_ppo_epochs); answers its wall seconds, split
                                     into generation, the rest of the experience and learning, and this
                                     process's CPU seconds so far (the parent counts them as its own)
    {"quit": true}

The update is trl's own train() loop, held between two updates by a callback: everything the loop does
in an update counts. The split comes from two timers put around trl's module functions: batch_generation
(the rollout's sampling) and np.random.permutation (the first one of an update starts the PPO epochs);
a third one adds up the time of trl's gc.collect() calls.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import types
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

ANSWERS = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)  # the protocol's channel
sys.stdout = sys.stderr  # libraries' prints must not mix into the answers
os.dup2(sys.stderr.fileno(), 1)

import numpy  # noqa: E402
import torch  # noqa: E402


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def answer(message: dict) -> None:
    ANSWERS.write(json.dumps(message) + "\n")


def request() -> dict:
    line = sys.stdin.readline()
    if not line:
        raise SystemExit(0)  # the parent went away
    return json.loads(line)


class Timers:
    """The timestamps of one update (see the module docstring)."""

    def __init__(self, module) -> None:
        self.begin = self.generation_start = self.generation_end = self.learning_start = None
        self.gc_seconds = 0.0
        generate = module.batch_generation
        collect = module.gc.collect

        def timed_generation(*args, **kwargs):
            self.generation_start = time.perf_counter()
            out = generate(*args, **kwargs)
            self.generation_end = time.perf_counter()
            return out

        def timed_permutation(*args, **kwargs):
            if self.learning_start is None:
                self.learning_start = time.perf_counter()
            return numpy.random.permutation(*args, **kwargs)

        def timed_collect(*args, **kwargs):
            started = time.perf_counter()
            out = collect(*args, **kwargs)
            self.gc_seconds += time.perf_counter() - started
            return out

        module.batch_generation = timed_generation
        module.gc = types.SimpleNamespace(collect=timed_collect)
        proxy = types.ModuleType("numpy_timed")
        proxy.__dict__.update(numpy.__dict__)
        proxy.random = types.SimpleNamespace(permutation=timed_permutation)
        module.np = proxy

    def start(self) -> None:
        self.begin, self.learning_start, self.gc_seconds = time.perf_counter(), None, 0.0

    def split(self) -> dict:
        end = time.perf_counter()
        return {
            "seconds": end - self.begin,
            "generation_seconds": self.generation_end - self.generation_start,
            "experience_seconds": self.learning_start - self.begin,
            "learning_seconds": end - self.learning_start,
            "gc_seconds": self.gc_seconds,  # trl's gc.collect() calls (one in the experience, one after it)
            "cpu_seconds": cpu_seconds(),
        }


def build(setup: dict):
    import datasets
    import transformers as T
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as module

    policy_dir, reward_dir = setup["policy"], setup["reward"]
    policy = T.AutoModelForCausalLM.from_pretrained(policy_dir, attn_implementation="sdpa")
    reference = T.AutoModelForCausalLM.from_pretrained(policy_dir, attn_implementation="sdpa")
    value = T.AutoModelForSequenceClassification.from_pretrained(
        reward_dir, num_labels=1, attn_implementation="sdpa"
    )
    reward = T.AutoModelForSequenceClassification.from_pretrained(
        reward_dir, num_labels=1, attn_implementation="sdpa"
    )
    tokenizer = T.AutoTokenizer.from_pretrained(policy_dir)
    tokenizer.padding_side = "left"
    h = setup["hyper"]
    args = PPOConfig(
        output_dir=setup["work"], per_device_train_batch_size=h["micro_batch"],
        gradient_accumulation_steps=h["batch"] // h["micro_batch"], num_mini_batches=h["batch"] // h["mini_batch"],
        num_ppo_epochs=h["epochs"], response_length=h["response_length"], temperature=1.0,
        local_rollout_forward_batch_size=h["batch"], total_episodes=10**9, num_sample_generations=0,
        stop_token=None, missing_eos_penalty=None, whiten_rewards=False, kl_coef=h["kl_coef"],
        kl_estimator="k1", cliprange=h["clip"], vf_coef=h["vf_coef"], cliprange_value=h["value_clip"],
        gamma=h["gamma"], lam=h["lam"], learning_rate=h["lr"], weight_decay=0.0, adam_beta1=0.9,
        adam_beta2=0.999, adam_epsilon=1e-8, lr_scheduler_type="constant", use_cpu=True, bf16=False, fp16=False,
        logging_steps=10**6, save_strategy="no", report_to="none", disable_tqdm=True, seed=0,
        dataloader_num_workers=0,
    )  # fmt: skip
    dataset = datasets.Dataset.from_dict({"input_ids": setup["prompts"]})
    trainer = PPOTrainer(
        args=args, processing_class=tokenizer, model=policy, ref_model=reference, reward_model=reward,
        train_dataset=dataset, value_model=value,
    )  # fmt: skip
    return trainer, module


@torch.no_grad()
def check(trainer, module, request_: dict) -> None:
    """Log-probs, values and scores of fixed query-responses, as trl's update computes them."""
    from trl.experimental.utils import get_reward
    from trl.trainer.utils import selective_log_softmax

    data = torch.load(request_["check"])
    query_responses, context = data["query_responses"], int(data["context_length"])
    pad = trainer.processing_class.pad_token_id
    responses = query_responses[:, context:]
    temperature = trainer.args.temperature + 1e-7

    def logprobs(model):
        logits = module.forward(model, query_responses, pad).logits[:, context - 1 : -1] / temperature
        return selective_log_softmax(logits, responses)

    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    values, _, _ = get_reward(unwrapped.value_model, query_responses, pad, context)
    _, scores, _ = get_reward(trainer.reward_model, query_responses, pad, context)
    out = {
        "policy_logprobs": logprobs(unwrapped.policy),
        "reference_logprobs": logprobs(trainer.ref_model),
        "values": values[:, context - 1 : -1].squeeze(-1),
        "scores": scores,
    }
    torch.save(out, request_["out"])
    answer({"checked": request_["out"]})


def main() -> None:
    setup = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    torch.set_num_threads(setup["threads"])
    import transformers
    import trl
    from transformers import TrainerCallback

    trainer, module = build(setup)
    timers = Timers(module)
    answer({"ready": True, "trl": trl.__version__, "transformers": transformers.__version__,
            "torch": torch.__version__})  # fmt: skip

    def next_update(control) -> None:
        """Answer requests until one asks for an update (or to stop)."""
        while True:
            r = request()
            if "check" in r:
                check(trainer, module, r)
            elif r.get("step"):
                timers.start()
                return
            elif r.get("quit"):
                control.should_training_stop = True
                answer({"quit": True})
                raise SystemExit(0)
            elif r.get("train"):
                answer({"training": True})
            else:
                answer({"error": f"unknown request {r}"})

    class Gate(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            next_update(control)

        def on_step_end(self, args, state, control, **kwargs):
            answer({**timers.split(), "update": state.global_step})
            next_update(control)

    trainer.add_callback(Gate())
    while True:  # checks before training; then train() (the gate holds it before each update)
        r = request()
        if "check" in r:
            check(trainer, module, r)
        elif r.get("train"):
            answer({"training": True})
            trainer.train()
            return
        elif r.get("quit"):
            answer({"quit": True})
            return


if __name__ == "__main__":
    main()
