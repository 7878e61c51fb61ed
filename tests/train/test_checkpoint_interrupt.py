"""Ctrl-C while a checkpoint is written: the checkpoint is finished first, then the run stops."""

import os
import signal
import time

import pytest
import torch

from plmkit.train.checkpoint import (
    finish_checkpoint,
    interrupts_deferred,
    latest_checkpoint,
    temp_checkpoint_dir,
)


@pytest.fixture(autouse=True)
def default_sigint():
    """Ctrl-C raising KeyboardInterrupt, as in a fresh process, whatever an earlier test installed."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_an_interrupt_inside_the_block_is_raised_when_it_ends():
    reached_the_end = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the signal is handled by now; it must not have raised
            reached_the_end.append(True)
    assert reached_the_end == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_no_interrupt_changes_nothing():
    with interrupts_deferred():
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_during_the_state_write_still_leaves_a_complete_checkpoint(tmp_path, monkeypatch):
    """The interrupt lands inside torch.save (where it used to leave a half-written zip and a RuntimeError
    that hid it): the checkpoint completes and only then does KeyboardInterrupt reach the caller."""
    real_save = torch.save

    def save_interrupted(obj, f, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_interrupted)
    tmp = temp_checkpoint_dir(tmp_path, 4, os.getpid())
    tmp.mkdir(parents=True)  # the weights written; what is left is the training state
    with pytest.raises(KeyboardInterrupt):
        finish_checkpoint(tmp_path, 4, tmp, {"x": torch.ones(2)}, {}, keep_last=2)
    final = latest_checkpoint(tmp_path)
    assert final is not None and final.name.endswith("4")
    assert not list((tmp_path / "checkpoints").glob(".step-*"))
