"""The words of the text-to-image demo model ``builtin:fmnist-sd-32``, without torch.

The model was trained on Fashion-MNIST with plain captions (pretrain_sd.py) and knows only
these words; the web app reads them to show, before a run starts, the prompts the run will
train and sample with (the core reads them from the model's ``extra``, models.py).
"""
from __future__ import annotations

# The words a caption uses for each class; the prompts of the demo galleries only use these.
CLASS_WORDS = {0: "t-shirt", 1: "trousers", 2: "pullover", 3: "dress", 4: "coat", 5: "sandal",
               6: "shirt", 8: "bag", 9: "ankle boot"}
SHOE_CLASSES = (5, 9)  # also captioned "shoe", so "shoe" names footwear without a sneaker
TEMPLATES = ("a photo of {article}{word}", "a product photo of {article}{word}", "{article}{word}")
# The caption templates with the trigger word in place of the article: a gallery cycles them.
PROMPT_TEMPLATES = ("a photo of {token} {class}", "a product photo of {token} {class}", "{token} {class}")

# Everyday words for products the demo model draws under one of its own words: a team's
# photo set says "sneaker", the model knows "shoe".
CLASS_WORD_ALIASES = {
    "sneaker": "shoe", "sneakers": "shoe", "trainer": "shoe", "trainers": "shoe", "shoes": "shoe",
    "footwear": "shoe", "boot": "ankle boot", "boots": "ankle boot", "sandals": "sandal",
    "tshirt": "t-shirt", "t-shirts": "t-shirt", "tee": "t-shirt", "top": "t-shirt", "pants": "trousers",
    "jeans": "trousers", "trouser": "trousers", "sweater": "pullover", "jumper": "pullover",
    "jacket": "coat", "handbag": "bag", "bags": "bag", "purse": "bag", "blouse": "shirt",
}

# Settings of this model that differ from the text-to-image defaults (AdaptConfig.resolved),
# per mode. Its UNet has 3.9M weights against SD 1.5's 860M: at SD's LoRA rate (1e-4) a Quick
# run of 300 steps left 15% of its "sks shoe" samples sneakers, at 1e-3 most of them
# (benchmarks/results/fewshot-t2i-tuning.md).
DEMO_DEFAULT_SETTINGS = {"lora": {"learning_rate": 1e-3}, "full": {"learning_rate": 1e-4}}


def article(word: str) -> str:
    if word == "trousers":
        return ""
    return "an " if word[0] in "aeiou" else "a "


def class_prompt(label: int) -> str:
    """The prompt that names one known class, as the prompt-following benchmark asks it."""
    word = CLASS_WORDS[label]
    return f"a photo of {article(word)}{word}"


def known_words() -> list[str]:
    return sorted(set(CLASS_WORDS.values()) | {"shoe"})


def demo_vocabulary() -> dict:
    """What the core needs to know about the words of this model: the class words it was
    trained on, aliases, and the prompt templates of its captions (a gallery of this model
    only uses these; other words are unknown to it)."""
    return {"class_words": known_words(), "class_word_aliases": dict(CLASS_WORD_ALIASES),
            "prompt_templates": list(PROMPT_TEMPLATES)}


def model_word(class_word: str) -> str:
    """The word the demo model's prompts use for a photo set's class word: its own word, its
    alias ("sneaker" -> "shoe"), or the word as it is when it has none (the model never read it)."""
    word = class_word.strip().lower()
    if word in known_words():
        return word
    return CLASS_WORD_ALIASES.get(word, class_word)


def gallery_prompts(class_word: str, token: str = "sks") -> list[str]:
    """The prompts a demo gallery cycles through, for a photo set's class word."""
    word = model_word(class_word)
    return [t.replace("{token}", token).replace("{class}", word) for t in PROMPT_TEMPLATES]
