#!/usr/bin/env python3
"""Reference token ids from Hugging Face `tokenizers` for resa's tokenizer tests.

Builds a `tokenizers.Tokenizer` from the vocabulary and merges of a GGUF file (the default model,
SmolLM2-135M-Instruct) once per pre-tokenizer variant, each configured the way the Hugging Face
tokenizer.json of the model family is:

  smollm     Sequence[Digits(individual_digits), ByteLevel(use_regex)]        (SmolLM2)
  gpt2       ByteLevel(use_regex)                                              (GPT-2)
  qwen2      NFC; Sequence[Split(Qwen2 regex, Isolated), ByteLevel(no regex)]  (Qwen2)
  llama-bpe  Sequence[Split(Llama 3 regex, Isolated), ByteLevel(no regex)],
             BPE ignore_merges                                                 (Llama 3)

with the ByteLevel decoder and the GGUF's control tokens (type 3) as special added tokens and
user-defined tokens (type 4) as plain added tokens. For each variant it writes
OUT/<variant>/tokenizer.json, tokenizer_config.json (chat template, BOS/EOS) and expected.json
(the ids and decoded text HF gives for every test string), plus OUT/manifest.json, which
resa_tokenizer_check reads.

testdata/smollm2_reference_ids.json is OUT/smollm/expected.json, committed so that the unit test
checks FromGguf without Python. Regenerate it with:
  python make_reference.py --gguf MODEL --out-dir /tmp/ref --variants smollm
  cp /tmp/ref/smollm/expected.json smollm2_reference_ids.json

Exit status 77 (ctest's skip code) when `tokenizers` or `gguf` cannot be imported.
"""

import argparse
import json
import os
import random
import sys

QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
VARIANTS = ["smollm", "gpt2", "qwen2", "llama-bpe"]


def fixed_cases():
    return [
        "",
        "Hello world",
        "Hello, world! How are you doing today?",
        "The quick brown fox jumps over the lazy dog.",
        "  leading spaces",
        "trailing spaces   ",
        "multiple   spaces\tand\ttabs",
        "\n\n\nnewlines\n",
        "windows\r\nline\r\nendings\r\n",
        " ",
        "   ",
        "\t",
        "\n",
        "a    b\t\t\tc\n\n  \n d",
        "café résumé naïve Ångström façade",
        "cafe\u0301 (decomposed e + U+0301) vs caf\u00e9",
        "Ünïcödé ünd Àccéntś",
        "你好，世界！这是一个测试。",
        "こんにちは世界、カタカナもテスト",
        "안녕하세요 세계",
        "Привет, мир! Ελληνικά",
        "مرحبا بالعالم ١٢٣٤",
        "I \u2764\ufe0f \U0001F980 and \U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466 family \U0001F1EB\U0001F1F7",
        "thumbs \U0001F44D\U0001F3FD up",
        "def foo(x):\n\treturn x**2 + 3.14159\n",
        "if (a != b && c >= 0) { printf(\"%d\\n\", a); }",
        "for (int i = 0; i < n; ++i) {\n    sum += v[i];\n}\n",
        "<html><body class=\"x\">&amp;</body></html>",
        "https://example.com/path?q=1&r=2#frag user@example.org",
        "12345 67890",
        "3.14159265358979",
        "in 2024, 1,000,000 people paid $1.99",
        "١٢٣ ½ Ⅷ ² ³ ⁴",
        "I'm you're they've he'd she'll it's don't",
        "I'M YOU'RE THEY'VE HE'D SHE'LL IT'S",
        "it'\u017f and the Kelvin sign \u212a's",
        "curly ’quotes’ “double” — dash … ellipsis",
        "<|im_start|>user\nhi<|im_end|>",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
        "text<|endoftext|>more text",
        "<|im_start|><|im_end|><|endoftext|>",
        "<|im_start",
        "<<|im_end|>>",
        "<repo_name>resa<file_sep>main.cc",
        "a\u00a0b\u00a0\u00a0c",
        "!\u180e! and !\u0085! and \u3000full\u3000width",
        "line\u2028separator\u2029para",
        "zero\u200bwidth\u200cjoiners\u200d",
        "\x00\x01\x02 control \x7f",
        "a" * 3000,
        "supercalifragilisticexpialidocious" * 40,
        "antidisestablishmentarianism",
        "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n",
    ]


def random_cases(n=60, seed=1234):
    rng = random.Random(seed)
    pool = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
            + list(" \t\n\r.,;:!?'\"()[]{}<>|/\\-_+=*&^%$#@~`")
            + ["  ", "   ", "\n\n", " '", "'s", "'ll", "’", "é", "ñ", "ü", "e\u0301", "ß", "ſ",
               "中", "文", "字", "あ", "カ", "한", "ا", "٣", "½", "Ⅷ", "²", "\u00a0", "\u2028",
               "\u180e", "\u3000", "\u0085", "\U0001F980", "\U0001F44D\U0001F3FD", "\u200d",
               "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|", "|>", "the", " the", "ing",
               " and", "123", "2024"])
    out = []
    for _ in range(n):
        k = rng.randint(1, 40)
        out.append("".join(rng.choice(pool) for _ in range(k)))
    return out


def read_gguf(path):
    from gguf import GGUFReader

    r = GGUFReader(path)

    def field(key):
        return r.fields.get(key)

    def strings(key):
        f = field(key)
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    def ints(key):
        f = field(key)
        return [int(f.parts[i][0]) for i in f.data]

    def scalar(key):
        f = field(key)
        return None if f is None else f.parts[f.data[0]][0]

    def string(key):
        f = field(key)
        return None if f is None else bytes(f.parts[f.data[0]]).decode("utf-8")

    model = string("tokenizer.ggml.model")
    if model != "gpt2":
        raise SystemExit(f"{path}: tokenizer.ggml.model is {model!r}, expected 'gpt2'")
    tokens = strings("tokenizer.ggml.tokens")
    types = ints("tokenizer.ggml.token_type") if field("tokenizer.ggml.token_type") else [1] * len(tokens)
    merges = strings("tokenizer.ggml.merges")
    bos = scalar("tokenizer.ggml.bos_token_id")
    eos = scalar("tokenizer.ggml.eos_token_id")
    return {
        "tokens": tokens,
        "types": types,
        "merges": [tuple(m.split(" ", 1)) for m in merges],
        "bos": None if bos is None else tokens[int(bos)],
        "eos": None if eos is None else tokens[int(eos)],
        "chat_template": string("tokenizer.chat_template"),
    }


def build(variant, vocab):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers as pre

    ids = {tok: i for i, tok in enumerate(vocab["tokens"])}
    bpe = models.BPE(vocab=ids, merges=vocab["merges"], ignore_merges=(variant == "llama-bpe"))
    t = Tokenizer(bpe)
    if variant == "smollm":
        t.pre_tokenizer = pre.Sequence([pre.Digits(individual_digits=True),
                                        pre.ByteLevel(add_prefix_space=False, use_regex=True)])
    elif variant == "gpt2":
        t.pre_tokenizer = pre.ByteLevel(add_prefix_space=False, use_regex=True)
    elif variant in ("qwen2", "llama-bpe"):
        pattern = QWEN2_PATTERN if variant == "qwen2" else LLAMA3_PATTERN
        t.pre_tokenizer = pre.Sequence([pre.Split(Regex(pattern), behavior="isolated", invert=False),
                                        pre.ByteLevel(add_prefix_space=False, use_regex=False)])
        if variant == "qwen2":
            t.normalizer = normalizers.NFC()
    else:
        raise SystemExit(f"unknown variant {variant!r}")
    t.decoder = decoders.ByteLevel()
    special = [AddedToken(tok, special=True, normalized=False)
               for tok, ty in zip(vocab["tokens"], vocab["types"]) if ty == 3]
    user = [AddedToken(tok, special=False, normalized=False)
            for tok, ty in zip(vocab["tokens"], vocab["types"]) if ty == 4]
    if special:
        t.add_special_tokens(special)
    if user:
        t.add_tokens(user)
    return t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", required=True, help="GGUF file with a gpt2 (byte-level BPE) tokenizer")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    try:
        import gguf  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError as e:
        print(f"SKIP: {sys.executable} cannot import {e.name} (pip install tokenizers gguf numpy)")
        return 77

    vocab = read_gguf(args.gguf)
    cases = fixed_cases() + random_cases()
    variants = [v for v in args.variants.split(",") if v]
    os.makedirs(args.out_dir, exist_ok=True)
    for v in variants:
        t = build(v, vocab)
        d = os.path.join(args.out_dir, v)
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "tokenizer.json")
        t.save(path)
        if v == "gpt2":
            # Older files store merges as "left right" strings: cover that form too.
            with open(path, encoding="utf-8") as f:
                j = json.load(f)
            j["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m
                                    for m in j["model"]["merges"]]
            with open(path, "w", encoding="utf-8") as f:
                json.dump(j, f, ensure_ascii=False)
        config = {"add_bos_token": False, "bos_token": vocab["bos"], "eos_token": vocab["eos"]}
        if vocab["chat_template"]:
            config["chat_template"] = vocab["chat_template"]
        with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, ensure_ascii=False, indent=1)
        expected = {
            "generator": f"tokenizers {tokenizers.__version__} (make_reference.py)",
            "variant": v,
            "cases": [],
        }
        for text in cases:
            ids = t.encode(text, add_special_tokens=False).ids
            expected["cases"].append({
                "text": text,
                "ids": ids,
                "decoded": t.decode(ids, skip_special_tokens=False),
            })
        with open(os.path.join(d, "expected.json"), "w", encoding="utf-8") as f:
            json.dump(expected, f, ensure_ascii=False, separators=(",", ":"))
        print(f"{v}: {len(cases)} cases -> {d}")
    with open(os.path.join(args.out_dir, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump({"gguf": os.path.abspath(args.gguf), "variants": variants}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
