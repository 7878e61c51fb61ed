"""A Hugging Face folder served as it is: a tiny Qwen2 (rotary positions, grouped-query attention) saved by
transformers with a tokenizer whose tokenizer_config.json carries a ChatML chat template. The server reads
the template and its end-of-turn token, and its greedy answers equal transformers' own generate()."""

from __future__ import annotations

import threading

import pytest
import torch

from train_helpers import english_text

transformers = pytest.importorskip("transformers")

from plmkit.serve.batcher import Batcher, SamplingParams  # noqa: E402
from plmkit.serve.served import load_served  # noqa: E402

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator([english_text(6_000)], trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHATML
    )
    config = transformers.Qwen2Config(
        vocab_size=backend.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("hf") / "tiny-qwen2"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model, tokenizer


@pytest.mark.slow
def test_hf_folder_serves_with_its_template_and_transformers_greedy(qwen_folder):
    folder, reference, hf_tokenizer = qwen_folder
    served = load_served(folder)
    im_end = hf_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert served.template is not None and im_end in served.stop_ids
    messages = [{"role": "user", "content": "red or blue?"}]
    prompt = served.chat_ids(messages)
    expected_prompt = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    assert prompt == list(getattr(expected_prompt, "input_ids", expected_prompt))
    batcher = Batcher(served, max_batch=4)
    finished, tokens = threading.Event(), []

    def sink(update):
        tokens.extend(update.token_ids)
        if update.finish_reason:
            finished.set()

    try:
        batcher.submit([prompt], 1, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True), sink)
        assert finished.wait(60)
    finally:
        batcher.close()
    with torch.no_grad():
        out = reference.generate(
            torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0
        )
    assert tokens == out[0, len(prompt) :].tolist()
