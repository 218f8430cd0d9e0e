"""The reference's answer: `decode(...).split('assistant\\n')[-1].strip().split('[UN')[0]`."""

from moai_edge.engines.manifest import PromptConfig
from moai_edge.runtime.decoding.prompts import cut_answer

PROMPTS = PromptConfig(system="s <image>", image_token="<image>", templates={"eval": "{question}"}, answer_stop="[U")


def test_answer_is_stripped_before_the_stop_string():
    assert cut_answer("  \n A red circle.\n[UNUSED_TOKEN_145]  ", PROMPTS) == "A red circle.\n"
    assert cut_answer("\tYes \n", PROMPTS) == "Yes"


def test_answer_follows_the_last_assistant_turn():
    text = ("[UNUSED_TOKEN_146]user\nWhat?[UNUSED_TOKEN_145]\n[UNUSED_TOKEN_146]assistant\n"
            " Two squares.[UNUSED_TOKEN_145]")
    assert cut_answer(text, PROMPTS) == "Two squares."


def test_stop_string_comes_from_the_manifest():
    assert cut_answer(" one END two",
                      PromptConfig(system="", image_token="<image>", templates={}, answer_stop="END")) == "one "
