"""formats/chattemplates: a GGUF's Jinja chat template to the Go template ollama create takes."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from modelfs.formats.chattemplates import MATCH_DISTANCE, _table, levenshtein, ollama_template

CHATML_GO = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
)
# SmolLM2-135M-Instruct's tokenizer.chat_template: chatml with a default system prompt.
SMOLLM2_JINJA = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def table_distance(a: str, b: str) -> int:
    """The textbook dynamic programme, to check the bit-parallel one against."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="ab\u00e9\U0001f600", max_size=90), st.text(alphabet="abc", max_size=90))
def test_levenshtein_is_the_edit_distance(a: str, b: str) -> None:
    assert levenshtein(a, b) == table_distance(a, b) == levenshtein(b, a)


def test_a_gguf_template_near_a_known_one_gets_ollamas_go_template() -> None:
    known = ollama_template(SMOLLM2_JINJA)
    assert known is not None and known.name == "chatml"
    assert known.template.decode() == CHATML_GO
    assert known.stop == ("<|im_start|>", "<|im_end|>")


def test_every_entry_of_the_table_finds_itself_first_of_equals() -> None:
    entries = _table()
    assert len(entries) > 30
    for i, entry in enumerate(entries):
        first = next(e for e in entries[: i + 1] if e.jinja == entry.jinja)
        assert ollama_template(entry.jinja) == first.known
        assert b"\r\n" not in entry.known.template


def test_a_template_near_none_gets_none_and_costs_little() -> None:
    assert ollama_template("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}</s>") is None
    assert ollama_template("") is None
    started = time.monotonic()
    assert ollama_template(SMOLLM2_JINJA * 4000) is None
    assert ollama_template("x" * (16 << 20)) is None
    assert time.monotonic() - started < 2, "a long template was compared edit by edit"
    # Just inside and just outside the distance, by edits appended to a known template.
    base = _table()[0].jinja
    assert ollama_template(base + "z" * (MATCH_DISTANCE - 1)) is not None
    assert ollama_template(base + "z" * MATCH_DISTANCE) is None
