"""The loss mask covers exactly the assistant turns with weight != 0 (content and end-of-turn marker)."""

from __future__ import annotations

import json

from tunelab.data.render import render_chat, render_prompt
from tunelab.models.load import load_tokenizer


def masked_text(tokenizer, chat) -> str:
    return tokenizer.decode([t for t, m in zip(chat.input_ids, chat.loss_mask) if m])


def test_mask_covers_trained_assistant_turns_only(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    messages = [
        {"role": "system", "content": "You are a travel assistant."},
        {"role": "user", "content": "Capital of Peru?"},
        {"role": "assistant", "content": "Lima, on the Pacific coast.", "weight": 0},
        {"role": "user", "content": "And what should I see there?"},
        {"role": "assistant", "content": "Walk the cliffs of Miraflores at sunset. Do you like ceviche?"},
    ]
    chat = render_chat(tokenizer, messages)
    assert len(chat.input_ids) == len(chat.loss_mask)
    assert masked_text(tokenizer, chat) == "Walk the cliffs of Miraflores at sunset. Do you like ceviche?<|im_end|>\n"
    # the mask is one contiguous run that ends the conversation
    first = chat.loss_mask.index(True)
    assert all(chat.loss_mask[first:]) and not any(chat.loss_mask[:first])


def test_every_trained_turn_is_labelled_in_one_sample(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! Where to?"},
                {"role": "user", "content": "Japan"}, {"role": "assistant", "content": "Kyoto in spring?"}]
    chat = render_chat(tokenizer, messages)
    assert masked_text(tokenizer, chat) == "Hello! Where to?<|im_end|>\nKyoto in spring?<|im_end|>\n"
    full = tokenizer.decode(chat.input_ids)
    assert full == tokenizer.apply_chat_template(messages, tokenize=False)


def test_prompt_ends_with_the_generation_prompt(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    ids = render_prompt(tokenizer, [{"role": "user", "content": "Hi"}])
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n")


def test_tool_calls_are_rendered_for_templates_without_tool_support(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    call = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
    messages = [{"role": "user", "content": "Weather in Oslo?"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "4C and windy"},
                {"role": "assistant", "content": "Chilly! Bring layers. Planning any fjord trips?"}]
    text = masked_text(tokenizer, render_chat(tokenizer, messages))
    assert '<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo"}}\n</tool_call>' in text
    assert "4C and windy" not in text and text.endswith("fjord trips?<|im_end|>\n")
    assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"}  # the input was not modified


def test_gemma_default_template_folds_the_system_message_and_masks_model_turns(tiny_model):
    from tunelab.models.templates import GEMMA

    tokenizer = load_tokenizer(tiny_model)
    tokenizer.chat_template = GEMMA
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello! Where to?"}]
    chat = render_chat(tokenizer, messages)
    text = tokenizer.decode(chat.input_ids)
    assert text.endswith("<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
                         "Hello! Where to?<end_of_turn>\n")
    assert masked_text(tokenizer, chat) == "Hello! Where to?<end_of_turn>\n"
