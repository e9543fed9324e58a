"""Default chat templates for models that ship without one.

A base (non-instruct) model has no chat template. tunelab gives it one when the model is converted or imported,
records which one with the model, and every fine-tune records the exact template it trained with, so serving
renders prompts the way training did:

- `gemma`: Gemma's own turn format (`<start_of_turn>user … <end_of_turn>`), whose markers are single tokens in
  Gemma's vocabulary. Gemma has no system role, so a system message is prepended to the first user turn, as
  Gemma's instruct models do.
- `chatml`: for any other model, ChatML (`<|im_start|>role … <|im_end|>`); where the markers are not tokens of
  the vocabulary they are learned as ordinary text.
"""

from __future__ import annotations

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

GEMMA = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] + '\n\n' %}{% set messages = messages[1:] %}"
    "{% else %}{% set system = '' %}{% endif %}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (system if loop.first else '') + message['content'] + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

TEMPLATES = {"chatml": CHATML, "gemma": GEMMA}

# The text that ends an assistant turn under each default template (serving stops generation on it).
END_OF_TURN = {"chatml": "<|im_end|>", "gemma": "<end_of_turn>"}
