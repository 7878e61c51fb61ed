"""The README's first Python example runs as written (on a small corpus made here)."""

import re

from tiny import ROOT

README = ROOT / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "README has no python example"
    corpus = "\n".join(
        f"Line {i}: the quick brown fox jumps over the lazy dog, 敏捷的狐狸。" for i in range(300)
    )
    (tmp_path / "my_corpus.txt").write_text(corpus, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], str(README), "exec"), {})
    printed = capsys.readouterr().out
    assert "torch.Size([1," in printed
    assert (tmp_path / "runs" / "my-model" / "model.safetensors").is_file()
