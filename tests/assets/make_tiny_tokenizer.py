"""Regenerate tests/assets/tiny-tokenizer: a 384-token byte-level BPE tokenizer with a ChatML chat template.

Run: python tests/assets/make_tiny_tokenizer.py
"""

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

HERE = Path(__file__).parent
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TEXT = [
    "the quick brown fox jumps over the lazy dog",
    "what is the capital of france? paris is the capital of france.",
    "tunelab fine-tunes language models with lora adapters on a laptop",
    "a great movie with a wonderful cast and a terrible ending",
    "question answer instruction output input label text positive negative",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000",
] * 50


def main() -> None:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "<mask>"]
    trainer = trainers.BpeTrainer(
        vocab_size=384, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(TEXT, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        mask_token="<mask>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(HERE / "tiny-tokenizer")
    print(len(fast), "tokens")


if __name__ == "__main__":
    main()
