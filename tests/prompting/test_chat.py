"""Chat templates: rendering and {% generation %} masks equal transformers' apply_chat_template; the
tokenizer keeps its template through save / load and Hugging Face folders."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer as BackendTokenizer

from plmkit.errors import ConfigError, DataError
from plmkit.prompting.chat import BUILTIN, ChatTemplate, special_token_variables
from plmkit.prompting.sft_data import token_mask
from plmkit.tokenizer import SpecialTokens, Tokenizer
from plmkit.tokenizer.hf import load_hf_tokenizer, save_hf_tokenizer

CHAT_TOKENS = ["<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
CORPUS = [
    "You are a helpful assistant. What is the capital of France? Paris is the capital.",
    "Tell me a joke about cats and dogs, please. Why did the cat sit on the computer?",
    "今天天气真好，我们去公园散步吧。请把这句话翻译成英文。",
    "  spaces, tabs\tand\nnewlines\n and <b>markup</b> & symbols 😀",
] * 10

CONVERSATIONS = {
    "single": [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ],
    "system_multi": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Tell me a joke."},
        {"role": "assistant", "content": "Why did the cat sit on the computer?"},
        {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": "To keep an eye on the mouse."},
    ],
    "chinese_spaces": [
        {"role": "user", "content": "  请把这句话翻译成英文：今天天气真好。\n"},
        {"role": "assistant", "content": " The weather is nice today 😀 \n"},
    ],
    "open": [{"role": "user", "content": "Hello <b>there</b> & bye"}],
}

# Hub-style templates exercising the environment: whitespace control, namespace, loop controls, tojson,
# raise_exception, special-token variables, a {% generation %} block that leaves the end token outside.
CUSTOM = {
    "zephyr_like": (
        "{%- set ns = namespace(system='') -%}"
        "{%- for m in messages -%}"
        "{%- if m['role'] == 'system' %}{% set ns.system = m['content'] %}{% continue %}{% endif -%}\n"
        "<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n"
        "{%- if loop.last and ns.system %}\n[system was {{ ns.system | tojson }}]{% endif %}\n"
        "{% endfor %}"
        "{%- if add_generation_prompt %}<|assistant|>\n{% endif %}"
    ),
    "alternating": (
        "{{ bos_token }}"
        "{% for m in messages %}"
        "{% set offset = 1 if messages[0]['role'] == 'system' else 0 %}"
        "{% if m['role'] != 'system' and (m['role'] == 'user') != ((loop.index0 - offset) % 2 == 0) %}"
        "{{ raise_exception('roles must alternate user/assistant') }}{% endif %}"
        "{% if m['role'] == 'assistant' %}"
        "{% generation %}### Answer: {{ m['content'] }}{% endgeneration %}{{ eos_token }}\n"
        "{% else %}### {{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endif %}"
        "{% if loop.index > 50 %}{% break %}{% endif %}"
        "{% endfor %}"
    ),
}


def chat_tokenizer(pad: str | None = "<|pad|>") -> Tokenizer:
    """A byte-level BPE tokenizer with the built-in templates' control tokens as special tokens."""
    special = SpecialTokens(
        bos="<|begin_of_text|>", eos="<|endoftext|>", pad=pad, additional=list(CHAT_TOKENS)
    )
    return Tokenizer.train(CORPUS, "bpe", vocab_size=360, special_tokens=special)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return chat_tokenizer()


def hf_tokenizer(tok: Tokenizer, template: str):
    """transformers' fast tokenizer over a copy of the same backend, with `template` set."""
    transformers = pytest.importorskip("transformers")
    backend = BackendTokenizer.from_str(tok.backend.to_str())
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, **special_token_variables(tok))
    hf.chat_template = template
    return hf


def _conversation_cases():
    for name in CONVERSATIONS:
        for add_generation_prompt in (False, True):
            if name == "open" and not add_generation_prompt:
                continue
            yield name, add_generation_prompt


TEMPLATES = {**{n: b.source for n, b in BUILTIN.items()}, **CUSTOM}


@pytest.mark.parametrize("template_name", list(TEMPLATES))
def test_render_equals_transformers(tok, template_name):
    source = TEMPLATES[template_name]
    hf = hf_tokenizer(tok, source)
    template = ChatTemplate(source)
    variables = special_token_variables(tok)
    for name, gen in _conversation_cases():
        if template_name == "alternating" and name == "open":
            continue
        messages = CONVERSATIONS[name]
        expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        assert template.render(messages, add_generation_prompt=gen, **variables) == expected, (name, gen)
        text, spans = template.render_with_spans(messages, add_generation_prompt=gen, **variables)
        assert text == expected


@pytest.mark.parametrize("template_name", ["chatml", "qwen", "llama3", "alternating"])
def test_assistant_mask_equals_transformers(tok, template_name):
    source = TEMPLATES[template_name]
    hf = hf_tokenizer(tok, source)
    template = ChatTemplate(source)
    for name in ("single", "system_multi", "chinese_spaces"):
        messages = CONVERSATIONS[name]
        out = hf.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        text, spans = template.render_with_spans(messages, **special_token_variables(tok))
        encoding = tok.backend.encode(text, add_special_tokens=False)
        assert encoding.ids == list(out["input_ids"])
        mask = token_mask(encoding.offsets, spans)
        assert [int(m) for m in mask] == list(out["assistant_masks"]), name
        assert any(mask)


def test_builtin_spans_cover_answer_and_end_of_turn(tok):
    messages = CONVERSATIONS["system_multi"]
    for name, end in (("chatml", "<|im_end|>"), ("qwen", "<|im_end|>"), ("llama3", "<|eot_id|>")):
        text, spans = ChatTemplate.builtin(name).render_with_spans(messages, bos_token="<s>")
        assert [text[a:b] for a, b in spans] == [messages[2]["content"] + end, messages[4]["content"] + end]


def test_qwen_default_system_prompt_only_without_system():
    qwen = ChatTemplate.builtin("qwen")
    without = qwen.render(CONVERSATIONS["single"])
    assert without.startswith(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    )
    with_system = qwen.render(CONVERSATIONS["system_multi"])
    assert with_system.startswith("<|im_start|>system\nYou are terse.<|im_end|>\n")
    assert "helpful assistant" not in with_system


def test_nested_and_empty_generation_blocks():
    template = ChatTemplate(
        "{% for m in messages %}{% generation %}[{% generation %}{{ m['content'] }}{% endgeneration %}]"
        "{% endgeneration %}{% generation %}{% endgeneration %}{% endfor %}"
    )
    text, spans = template.render_with_spans(
        [{"role": "user", "content": "ab"}, {"role": "user", "content": "c"}]
    )
    assert text == "[ab][c]" and spans == [(0, 4), (4, 7)]  # outer blocks once, empty blocks dropped
    assert ChatTemplate("{{ messages[0]['content'] }}").render_with_spans(
        [{"role": "user", "content": "x"}]
    ) == ("x", [])


def test_template_errors():
    with pytest.raises(ConfigError, match="syntax error at line 1"):
        ChatTemplate("{% for m in messages %}")
    with pytest.raises(ConfigError, match='unknown chat template "chatlm".*did you mean "chatml"'):
        ChatTemplate.builtin("chatlm")
    rejecting = ChatTemplate(TEMPLATES["alternating"])
    with pytest.raises(DataError, match="roles must alternate"):
        rejecting.render([{"role": "assistant", "content": "hi"}])
    escape = ChatTemplate("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(ConfigError, match="unsafe"):
        escape.render([{"role": "user", "content": "x"}])
    with pytest.raises(DataError, match="list of messages"):
        ChatTemplate.builtin("chatml").render("hello")


def test_resolve(tok):
    assert ChatTemplate.resolve("llama3").name == "llama3"
    assert ChatTemplate.resolve("{{ 'x' }}").render([]) == "x"
    with pytest.raises(ConfigError, match="no chat_template"):
        ChatTemplate.resolve(None, tok)
    tok.chat_template = BUILTIN["chatml"].source
    try:
        assert ChatTemplate.resolve(None, tok).source == BUILTIN["chatml"].source
    finally:
        tok.chat_template = None


# ---- the tokenizer keeps its template -----------------------------------------------------------------
def test_tokenizer_save_load_keeps_chat_template(tok, tmp_path):
    tok.chat_template = CUSTOM["zephyr_like"]
    try:
        tok.save(tmp_path / "plm")
        config = json.loads((tmp_path / "plm" / "tokenizer_config.json").read_text(encoding="utf-8"))
        assert config["chat_template"] == CUSTOM["zephyr_like"]
        assert Tokenizer.load(tmp_path / "plm").chat_template == CUSTOM["zephyr_like"]
        save_hf_tokenizer(tok, tmp_path / "hf")
    finally:
        tok.chat_template = None
    assert Tokenizer.load(tmp_path / "hf").chat_template == CUSTOM["zephyr_like"]
    assert load_hf_tokenizer(tmp_path / "hf").chat_template == CUSTOM["zephyr_like"]
    tok.save(tmp_path / "none")
    assert "chat_template" not in json.loads(
        (tmp_path / "none" / "tokenizer_config.json").read_text(encoding="utf-8")
    )
    assert Tokenizer.load(tmp_path / "none").chat_template is None
    # transformers reads the template plmkit wrote and renders the same text
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(tmp_path / "hf"))
    messages = CONVERSATIONS["system_multi"]
    ours = ChatTemplate(CUSTOM["zephyr_like"]).render(messages, **special_token_variables(tok))
    assert hf.apply_chat_template(messages, tokenize=False) == ours


def test_hf_folder_chat_template_read(tok, tmp_path):
    tok.save(tmp_path)
    config_path = tmp_path / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    del config["plmkit_tokenizer"]
    config["chat_template"] = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    config_path.write_text(json.dumps(config), encoding="utf-8")
    assert load_hf_tokenizer(tmp_path).chat_template == "D"  # the default of several named templates
    (tmp_path / "chat_template.jinja").write_text("{{ 'jinja file' }}", encoding="utf-8")
    assert (
        load_hf_tokenizer(tmp_path).chat_template == "{{ 'jinja file' }}"
    )  # the file wins, as in transformers
    with pytest.raises(ConfigError, match="chat_template must be a Jinja string"):
        Tokenizer(tok.backend, tok.special_tokens, chat_template=["not", "a", "string"])
