"""`torchrun ... tests/dist_runner.py ARGS...` runs `plm ARGS...` in each process with a test-only fault.

PLMKIT_TEST_NAN_AT=RANK:CALL: on that rank only, the CALL-th training-mode forward (1-based) returns a
nan loss, as an overflow on one GPU would. Every rank must then skip that step together.
"""

from __future__ import annotations

import os
import sys


def install_nan(rank: int, call: int) -> None:
    import plmkit.recipes.common as setup

    if int(os.environ.get("RANK", "0")) != rank:
        return
    build = setup.build_recipe_model
    calls = {"n": 0}

    def hook(module, args, output):
        if module.training:
            calls["n"] += 1
            if calls["n"] == call:
                output.loss = output.loss * float("nan")
        return output

    def poisoned(config, tokenizer):
        model = build(config, tokenizer)
        model.register_forward_hook(hook)
        return model

    setup.build_recipe_model = poisoned


if __name__ == "__main__":
    fault = os.environ.get("PLMKIT_TEST_NAN_AT")
    if fault:
        rank, call = (int(x) for x in fault.split(":"))
        install_nan(rank, call)
    from plmkit.cli import main

    sys.exit(main(sys.argv[1:]))
