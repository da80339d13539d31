#!/usr/bin/env python3
"""Builds the tokenizer and chat-template goldens that tests/unit/test_tokenizer.c and test_chat.c
check against. Run with the oracle environment (transformers, tokenizers, gguf, sentencepiece,
jinja2, numpy):

    /opt/oracle/bin/python tests/reference/make_tokenizer_golden.py

Writes, next to this script:
  tokenizer_corpus.json            the test strings (built below, deterministic)
  smollm2_tokenizer.json           SmolLM2's tokenizer in tokenizer.json form, built from the GGUF
  tokenizer_golden_smollm2.json    ids for every corpus string, for that tokenizer
  spm_tiny_tokenizer.json          a tiny SentencePiece BPE (byte fallback) as a HF fast tokenizer
  spm_tiny.gguf                    the same vocabulary as llama-style GGUF metadata (no tensors)
  tokenizer_golden_spm_tiny.json   ids for every corpus string, for that tokenizer
  bpe_tiny_tokenizer.json          a tiny byte-level BPE with Llama 3's pre-tokenizer (Split regex
                                   + ByteLevel without regex, ignore_merges), trained here with
                                   tokenizers; added tokens: specials, <mask> (lstrip+rstrip),
                                   <think> (not special)
  bpe_tiny.gguf                    the same as GGUF metadata, tokenizer.ggml.pre = "llama-bpe"
  tokenizer_golden_bpe_tiny.json   ids for every corpus string, for that tokenizer (the GGUF has
                                   no lstrip/rstrip: its test skips strings with <mask>)
  chat_golden.json                 chat renders by jinja2 (transformers' settings)

What the goldens mean:
  ids          encode(s) as Hugging Face does by default: special tokens in the text are matched
               whole (transformers' split_special_tokens=False), no BOS (add_special_tokens=False;
               SmolLM2's add_bos_token is false anyway).
  ids_nospecial  the same with special tokens not matched (split_special_tokens=True /
               tokenizers' encode_special_tokens=True): tessera's parse_special = 0.
  decoded      decode(ids) with special tokens kept; equals s for every string (but bpe_tiny's
               strings with <mask>, whose match swallows the spaces around it).
  For spm_tiny, ids follow SentencePiece's dummy-prefix rule ("\u2581" before the text even when
  it starts with a space; none after a leading special token), which HF's Metaspace breaks for
  text starting with a space (it would encode " x" like "x"); ids_nospecial equal the
  sentencepiece library's own output on every string, and ids_hf holds plain HF for reference.

SmolLM2's pre-tokenizer: the GGUF says tokenizer.ggml.pre = "smollm". The model's own
tokenizer.json (and llama.cpp's "smollm" pre-type) isolates every Unicode number (\\p{N}) first and
then applies the GPT-2 ByteLevel regex: Sequence[Digits(individual_digits=True), ByteLevel]. We
build exactly that. transformers' GGUF loader instead uses plain ByteLevel for "smollm"; the script
reports on how many corpus strings the two differ (none expected: SmolLM2 has no merges that join a
digit to anything).
"""
import json
import os
import random
import sys

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
GGUF_PATH = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


# ---------------------------------------------------------------------------------------------
# Corpus


def build_corpus():
    c = []
    # Empty and tiny.
    c += ["", " ", "  ", "a", "A", ".", "\n", "\t", "\r\n", "0", "é", "中", "😀", "\u00a0"]
    # English prose.
    c += [
        "Hello world",
        "Hello, world!",
        "The quick brown fox jumps over the lazy dog.",
        "It was the best of times, it was the worst of times, it was the age of wisdom, it was the "
        "age of foolishness, it was the epoch of belief, it was the epoch of incredulity.",
        "Call me Ishmael. Some years ago—never mind how long precisely—having little or no money in "
        "my purse, and nothing particular to interest me on shore, I thought I would sail about a "
        "little and see the watery part of the world.",
        "In 1969, Neil Armstrong became the first person to walk on the Moon.",
        "What's the weather like today? I'd like to know before I go out.",
        "She said, \"I'm not sure.\" He replied: 'Neither am I.'",
        "E-mail me at someone@example.com or visit https://example.org/path?q=1&r=two#frag.",
        "The U.S.A. and the U.K. signed the treaty on Jan. 5th.",
        "Mr. O'Neil's dog doesn't like Mrs. McDonald's cat; they've fought, they'll fight, they'd fight again.",
        "DON'T SHOUT! I'M RIGHT HERE, YOU'RE TOO LOUD, WE'VE HEARD, THEY'LL KNOW, HE'D SAY.",
        "Don't, won't, can't, shouldn't, wouldn't, isn't, aren't, I've, you're, it's, we'll, he'd, I'm",
        "rock 'n' roll, 'tis the season, the '90s, students' books",
        "ALL CAPS SENTENCE WITH SOME WORDS",
        "camelCaseIdentifier and snake_case_identifier and kebab-case-identifier",
        "Supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
        "A man, a plan, a canal: Panama.",
        "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles",
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut "
        "labore et dolore magna aliqua.",
        "Q: What is 2+2?\nA: 4.",
        "1. First item\n2. Second item\n3. Third item",
        "- bullet one\n- bullet two\n  - nested bullet",
        "# Heading\n\nSome **bold** and _italic_ text with `inline code`.\n",
        "| col1 | col2 |\n|------|------|\n| a    | b    |",
        "He paid $1,234.56 for 3.5kg of coffee at 7:45 a.m. (that's 15% off).",
        "Temperature: -40°C = -40°F; ½ cup; 3¾ miles; x² + y² = z²",
        "...!!!???,,,;;;:::",
        "(((nested))) [[brackets]] {{braces}} <<angles>>",
        "~`!@#$%^&*()_+-={}[]|\\:\";'<>?,./",
        "hello\u2019s world \u201cquoted\u201d \u2018single\u2019",
        "naïve café résumé coöperate façade jalapeño",
    ]
    # Contractions at many positions and cases.
    for w in ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'Ve", "'LL", "'D"]:
        c.append("it" + w + " x" + w + " " + w + "a")
    # Numbers.
    c += [
        "1", "12", "123", "1234", "12345", "123456789012345678901234567890",
        "3.14159265358979323846", "-0.000001", "1e-10", "6.022e23", "1,000,000", "0x1F 0b1010 0o777",
        "v1.2.3-rc.4+build.5", "2024-01-15T10:30:00Z", "192.168.1.1:8080", "+1 (555) 123-4567",
        "Chapter 11, verse 3; pages 100-200", "٠١٢٣٤٥٦٧٨٩", "१२३४५", "一二三 123 ① ② ③ Ⅳ",
        "abc123def456", "  42  ", "3rd 21st 100th",
    ]
    # Code.
    c += [
        "int main(void) {\n    printf(\"Hello, world!\\n\");\n    return 0;\n}\n",
        "#include <stdio.h>\n#include <stdlib.h>\n\nstatic int add(int a, int b) { return a + b; }\n",
        "for (size_t i = 0; i < n; i++) {\n\tif (a[i] > max) max = a[i];\n}",
        "struct node { struct node *next; int value; };\ntypedef struct node node_t;",
        "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
        "class Foo(Bar):\n    \"\"\"Docstring.\"\"\"\n\n    def __init__(self, x: int = 0) -> None:\n        self._x = x\n",
        "import numpy as np\nx = np.arange(10).reshape(2, 5)\nprint(x.T @ x)",
        "lambda x: [y**2 for y in range(x) if y % 2 == 0]",
        "{\"name\": \"tessera\", \"version\": \"0.1.0\", \"tags\": [\"llm\", \"serving\"], \"ok\": true, \"n\": null}",
        "{\n  \"a\": 1,\n  \"b\": [1, 2, 3],\n  \"c\": {\"d\": \"e\"}\n}",
        "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC LIMIT 10;",
        "fn main() { let v: Vec<i32> = (0..10).collect(); println!(\"{:?}\", v); }",
        "<html><body><p class=\"x\">Hi &amp; bye</p></body></html>",
        "$ ls -la | grep '\\.c$' && echo done",
        "x=1;y=2;z=x+y;if(z>2){z--;}else{z++;}",
        "    indented by four\n        indented by eight\n\t\ttabbed twice",
        "a->b->c; p = &q; *p++ = **r; a <<= 2; b >>= 3; c != d; e == f; g && h || !i",
        "// comment\n/* block\n   comment */\n",
        "if __name__ == \"__main__\":\n    main()\n",
        "#!/usr/bin/env bash\nset -euo pipefail\n",
        "const f = async (x) => { await g(x ?? 0); };",
        "matrix[i][j] += alpha * A[i][k] * B[k][j];",
        "@decorator\ndef f(*args, **kwargs): ...",
        "printf(\"%d %s %5.2f %%\\n\", n, s, x);",
    ]
    # Whitespace runs.
    c += [
        "a  b", "a   b", "a    b", "a\tb", "a\t\tb", "a\nb", "a\n\nb", "a\n\n\nb", "a \n b",
        "a\r\nb\r\nc", "a\rb", "   leading spaces", "trailing spaces   ", "\n\nleading newlines",
        "trailing newlines\n\n", " \t \n \r\n ", "\t\t\t", "          ", "\n\n\n\n\n",
        "word \n\n  word", "x  \ny", "end with space ", " start with space", "  two leading",
        "mixed \t\n whitespace \u00a0 here", "a\u00a0b\u00a0\u00a0c", "a\u2003b\u2009c\u202fd",
        "a\u3000b", "line\u2028sep\u2029para", "a\u000bb\u000cc", "nel\u0085here", "a\u200bb",
        "\u00a0leading nbsp", "trailing nbsp\u00a0", "tab\there\tand\tthere",
    ]
    # Scripts.
    c += [
        "你好，世界！", "我爱自然语言处理。今天天气很好。", "日本語のテキストです。カタカナとひらがな。",
        "한국어 문장입니다. 안녕하세요!", "Привет, мир! Как дела?", "Съешь же ещё этих мягких французских булок, да выпей чаю.",
        "مرحبا بالعالم", "اللغة العربية جميلة جدا.", "नमस्ते दुनिया", "हिन्दी में लिखा गया वाक्य।",
        "Γειά σου Κόσμε", "שלום עולם", "สวัสดีชาวโลก", "Xin chào thế giới", "Merhaba dünya, nasılsın?",
        "Zażółć gęślą jaźń", "Ærøskøbing og Åbenrå", "ß ẞ ſ ﬁ ﬂ", "ǅ ǈ ǋ ǲ", "Ελληνικά ΕΛΛΗΝΙΚΆ",
        "English 中文 русский عربي हिन्दी mixed", "Tokyo東京Tokyo", "abcабвαβγ", "ქართული ენა", "Հայերեն",
        "ئۇيغۇرچە", "ᚠᛇᚻ᛫ᛒᛦᚦ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙", "𐍈𐌰𐌹𐍂𐌰", "Ｆｕｌｌｗｉｄｔｈ　ｔｅｘｔ",
        "e\u0301 a\u0300 o\u0308 (combining)", "ñ vs n\u0303", "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e\u0349\u035a\u032f\u031e\u0320\u034dalgo",
        "\u05d0\u05b8\u05d1\u05b8\u05d0", "क्षत्रिय", "தமிழ்", "বাংলা", "ಕನ್ನಡ", "ພາສາລາວ", "မြန်မာ", "ភាសាខ្មែរ",
        "አማርኛ", "ᐃᓄᒃᑎᑐᑦ",
    ]
    # Emoji.
    c += [
        "😀😃😄😁", "I ❤️ NY", "👍🏽 👍🏿 👋🏻", "👨‍👩‍👧‍👦 family", "🏳️‍🌈 flag", "🇺🇸🇯🇵🇩🇪",
        "🧑🏽‍💻 coder", "emoji at end 🎉", "🎉 emoji at start", "a😀b😀c", "😀 😀  😀", "☃ ★ ☎ ✓ ✗",
        "©®™", "🫠🫡🫶", "#️⃣ 1️⃣ 2️⃣", "👩🏾‍🤝‍👩🏼",
    ]
    # Special tokens embedded.
    c += [
        "<|im_start|>", "<|im_end|>", "<|endoftext|>",
        "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n",
        "text before<|im_end|>text after", "<|im_start|><|im_end|><|endoftext|>", "<|im_start|> spaced <|im_end|>",
        "<|im_start", "<|im_end|", "im_start|>", "<|im_sta rt|>", "<<|im_start|>>", "<|im_start|><|im_start|>",
        "<repo_name>tessera<file_sep>main.c<filename>x", "<jupyter_code>print(1)<jupyter_output>1",
        "<s>Hello</s>", "<s> Hello </s>", "<unk>", "[INST] hi [/INST]", "<|eot_id|>", "<|begin_of_text|>",
        "a<|endoftext|>b<|endoftext|>c", "\n<|im_end|>\n", " <|im_start|>", "<|im_end|> ",
        # For bpe_tiny's added tokens: <mask> strips spaces on both sides, <think> is not special.
        "fill the <mask> here", "  <mask>  ", "<mask>", "a<mask>b", "\n\t<mask>\u00a0\n",
        "<think>reasoning</think>answer", "x <think> y", "<think><mask><|eot_id|>",
    ]
    # Mixed and unusual.
    c += [
        "C'est déjà l'été à Paris — n'est-ce pas ?",
        "Größe: 10µm, Preis: 5€, Temperatur: 20℃",
        "The café's naïve résumé cost €12.50 (≈ $13.60).",
        "«Guillemets» „Anführungszeichen“ 「括弧」 『二重』",
        "→ ← ↑ ↓ ⇒ ⇐ ∀x∃y: x ≤ y ∧ y ≥ x ∨ ¬P",
        "∑_{i=1}^{n} i = n(n+1)/2; ∫₀¹ x² dx = ⅓",
        "Ünïcödé wîth äccénts everywhere",
        "URL: https://ja.wikipedia.org/wiki/東京都 path",
        "path/to/file.txt C:\\Windows\\System32 ~/.bashrc",
        "key=value&other=123;x=y",
        "https://example.com/a_b-c.d?e=f%20g",
        "user_name_123 __dunder__ _private CONST_VALUE",
        "....", "----", "____", "====", "****", "////", "\\\\\\\\",
        "!!!", "???", "''", "\"\"", "'''", "\"\"\"", "'a'", "\"a\"",
        "a'b", "a's", "'s'", "x'sy", "''s", "s'",
        "tab\t\tafter", "🙂\n🙂", "中\n文", "a\u0000b", "\u0001\u0002\u0003\u001f\u007f",
        "\ufeffBOM at start", "\ufffdreplacement char", "\U0010fffd private use", "\ue000 private",
        "tildes ~~~ and carets ^^^", "html &lt;tag&gt; &#x27;", "mixed123abc456", "x1y2z3",
        "ending with punctuation.", "(parenthetical)", "[bracketed]", "{braced}",
        "line1\nline2\nline3\n", "CamelCase HTTPServer XMLHttpRequest iPhone eBay",
        "a" * 100, "ab" * 60, " " * 50, "\n" * 20, "1" * 80, "😀" * 10, "中" * 30, "\t" * 12,
        "aaaa bbbb cccc dddd eeee ffff gggg hhhh iiii jjjj kkkk",
    ]
    # Deterministic pseudo-random mixtures.
    rng = random.Random(1234)
    pool = [
        "the", "of", "and", "to", "in", "is", "you", "that", "it", "he", "was", "for", "on", "are",
        "as", "with", "his", "they", "I", "at", "be", "this", "have", "from", "or", "one", "had",
        "by", "word", "but", "not", "what", "all", "were", "we", "when", "your", "can", "said",
        "中文", "русский", "😀", "123", "4.5", "don't", "it's", "\n", "  ", "\t", ",", ".", "!",
        "<|im_end|>", "é", "ñ", "x_y", "(a)", "{\"k\": 1}", "\u00a0", "👍🏽", "ﬁ", "ß",
    ]
    for _ in range(60):
        n = rng.randint(1, 24)
        s = ""
        for _ in range(n):
            s += rng.choice(pool)
            s += rng.choice([" ", " ", " ", "", "\n", "  "])
        c.append(s)
    # Random code points from assorted blocks.
    blocks = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF),
              (0x900, 0x97F), (0x3040, 0x30FF), (0x4E00, 0x4FFF), (0xAC00, 0xAD00), (0x1F300, 0x1F64F),
              (0x2000, 0x206F), (0x10000, 0x1007F)]
    for _ in range(20):
        n = rng.randint(1, 30)
        s = ""
        for _ in range(n):
            lo, hi = rng.choice(blocks)
            s += chr(rng.randint(lo, hi))
        c.append(s)
    # Dedupe, keep order.
    seen, out = set(), []
    for s in c:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


# ---------------------------------------------------------------------------------------------
# SmolLM2 from the GGUF


def gguf_arrays(path, keys):
    import gguf

    r = gguf.GGUFReader(path)
    out = {}
    for k in keys:
        f = r.fields.get(k)
        if f is None:
            continue
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            if f.types[1] == gguf.GGUFValueType.STRING:
                out[k] = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
            else:
                out[k] = [f.parts[i][0].item() for i in f.data]
        elif f.types[0] == gguf.GGUFValueType.STRING:
            out[k] = bytes(f.parts[f.data[0]]).decode("utf-8")
        else:
            out[k] = f.parts[f.data[0]][0].item()
    return out


def build_smollm2():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    m = gguf_arrays(GGUF_PATH, ["tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                                "tokenizer.ggml.merges", "tokenizer.ggml.pre", "tokenizer.chat_template"])
    tokens = m["tokenizer.ggml.tokens"]
    ttype = m["tokenizer.ggml.token_type"]
    merges = [tuple(x.split(" ", 1)) for x in m["tokenizer.ggml.merges"]]
    assert m["tokenizer.ggml.pre"] == "smollm"
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True)
                            for t, ty in zip(tokens, ttype) if ty == 3])
    user = [AddedToken(t, normalized=False, special=False) for t, ty in zip(tokens, ttype) if ty == 4]
    if user:
        tok.add_tokens(user)

    # transformers' own GGUF path (plain ByteLevel for "smollm"), to report any difference.
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

        d = {"tokenizer_type": "gpt2", "pre_tokenizer_type": "smollm", "tokens": tokens,
             "token_type": ttype, "merges": m["tokenizer.ggml.merges"]}
        hf_gguf, _ = convert_gguf_tokenizer("llama", d)
    except Exception as e:  # noqa: BLE001
        print("note: transformers GGUF converter unavailable:", e, file=sys.stderr)
        hf_gguf = None
    return tok, hf_gguf, m["tokenizer.chat_template"]


def hf_encoder(tok):
    """encode(s, parse_special) for a tokenizers.Tokenizer, as transformers calls it."""

    def encode(s, parse_special):
        tok.encode_special_tokens = not parse_special
        ids = tok.encode(s, add_special_tokens=False).ids
        tok.encode_special_tokens = False
        return ids

    return encode


def write_golden(path, name, source, encode, decode, corpus, extra=None, lossy=None):
    entries = []
    for s in corpus:
        ids = encode(s, True)
        e = {"text": s, "ids": ids, "ids_nospecial": encode(s, False), "decoded": decode(ids)}
        if extra:
            e.update(extra(s))
        entries.append(e)
    bad = [e["text"] for e in entries if e["decoded"] != e["text"] and not (lossy and lossy in e["text"])]
    if bad:
        print(f"{name}: decode(encode(s)) != s for {len(bad)} strings: {bad[:5]!r}", file=sys.stderr)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"tokenizer": name, "source": source, "add_bos": False, "entries": entries}, f,
                  ensure_ascii=False, indent=0)
        f.write("\n")
    return entries


# ---------------------------------------------------------------------------------------------
# Tiny SentencePiece BPE


def spm_training_text(corpus):
    rng = random.Random(99)
    words = ("the quick brown fox jumps over a lazy dog while seven wizards box and hum; "
             "people often say that language models learn from text written by many hands, "
             "numbers like 1 2 3 and names such as Alice Bob Carol appear everywhere").split()
    lines = [s for s in corpus if s.strip()]
    for _ in range(3000):
        lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(3, 14))))
    return lines


def build_spm_tiny(corpus):
    import sentencepiece as spm
    from transformers import LlamaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    import tempfile

    prefix = os.path.join(tempfile.mkdtemp(), "spm_tiny")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(spm_training_text(corpus)),
        model_prefix=prefix,
        model_type="bpe",
        vocab_size=700,
        byte_fallback=True,
        character_coverage=0.995,  # rare characters go through byte fallback
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        allow_whitespace_only_pieces=True,
        split_digits=False,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    n = sp.get_piece_size()
    pieces = [sp.id_to_piece(i) for i in range(n)]
    scores = [sp.get_score(i) for i in range(n)]
    types = []
    for i in range(n):
        if sp.is_unknown(i):
            types.append(2)
        elif sp.is_control(i):
            types.append(3)
        elif sp.is_byte(i):
            types.append(6)
        elif sp.is_unused(i):
            types.append(5)
        else:
            types.append(1)
    # As transformers' SentencePieceExtractor does for a BPE model: merges from the vocabulary
    # in id order.
    vocab = {p: i for i, p in enumerate(pieces)}
    merges = generate_merges(vocab)
    hf = LlamaTokenizer(vocab=vocab, merges=merges)  # Metaspace(prepend_scheme="first"), byte fallback
    tok = hf.backend_tokenizer
    return sp, tok, pieces, scores, types


def spm_encoder(tok):
    """SentencePiece's rule for the dummy prefix: "\u2581" goes before the first text fragment
    whenever there is one at offset 0, even if it starts with a space (sentencepiece and llama.cpp
    do this; HF's Metaspace skips it then, which makes " x" and "x" encode alike). Fragments after
    a special token get none (HF's prepend_scheme "first"). Built from the HF tokenizer with the
    prefix turned off, so special-token splitting is HF's."""
    from tokenizers import Tokenizer, pre_tokenizers

    never = Tokenizer.from_str(tok.to_str())
    never.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never", split=False)
    specials = [a.content for a in tok.get_added_tokens_decoder().values() if a.special]
    plain = hf_encoder(never)

    def encode(s, parse_special):
        if s == "":
            return []
        if parse_special and any(s.startswith(t) for t in specials):
            return plain(s, True)
        return plain(" " + s, parse_special)

    return encode


def write_spm_gguf(path, pieces, scores, types, chat_template):
    import gguf

    w = gguf.GGUFWriter(path, "llama")
    w.add_name("spm-tiny")
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(pieces)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(True)
    w.add_chat_template(chat_template)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---------------------------------------------------------------------------------------------
# Tiny byte-level BPE with Llama 3's pre-tokenizer


def build_bpe_tiny(corpus):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1200, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"])
    tok.train_from_iterator(spm_training_text(corpus), trainer)
    tok.add_tokens([AddedToken("<think>", normalized=False, special=False),
                    AddedToken("</think>", normalized=False, special=False)])
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=True, normalized=False, special=True)])
    return tok


def write_bpe_gguf(path, tok):
    import gguf

    j = json.loads(tok.to_str())
    n = max(max(j["model"]["vocab"].values()), max(a["id"] for a in j["added_tokens"])) + 1
    tokens = [""] * n
    types = [1] * n
    for t, i in j["model"]["vocab"].items():
        tokens[i] = t
    for a in j["added_tokens"]:
        tokens[a["id"]] = a["content"]
        types[a["id"]] = 3 if a["special"] else 4
    merges = [m if isinstance(m, str) else " ".join(m) for m in j["model"]["merges"]]
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("bpe-tiny")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.token_to_id("<|begin_of_text|>"))
    w.add_eos_token_id(tok.token_to_id("<|end_of_text|>"))
    w.add_eot_token_id(tok.token_to_id("<|eot_id|>"))
    w.add_add_bos_token(True)
    w.add_chat_template(LLAMA3_TEMPLATE)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---------------------------------------------------------------------------------------------
# Chat templates

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)


def render(template, messages, add_generation_prompt, **special):
    # transformers' settings (utils/chat_template_utils.py).
    from jinja2.exceptions import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                            **special)


def chat_cases():
    sys_msg = {"role": "system", "content": "You are terse."}
    u1 = {"role": "user", "content": "Hello!"}
    a1 = {"role": "assistant", "content": "Hi there. How can I help?"}
    u2 = {"role": "user", "content": "What is 2+2?"}
    padded = {"role": "user", "content": "  \n padded content \t\n"}
    uni = {"role": "user", "content": "Привет 👋 中文\nsecond line"}
    empty = {"role": "user", "content": ""}
    return [
        ("no_system", [u1], True),
        ("no_system_no_gen", [u1], False),
        ("with_system", [sys_msg, u1], True),
        ("multi_turn", [u1, a1, u2], True),
        ("multi_turn_system", [sys_msg, u1, a1, u2], True),
        ("ends_with_assistant", [sys_msg, u1, a1], False),
        ("padded", [padded], True),
        ("unicode", [uni], True),
        ("empty_content", [empty], True),
    ]


def build_chat_golden(smol_template):
    out = []
    u1 = {"role": "user", "content": "Hello!"}
    u2 = {"role": "user", "content": "What is 2+2?"}
    # SmolLM2: also through transformers' own renderer when it is importable.
    try:
        from transformers.utils.chat_template_utils import render_jinja_template
    except Exception:  # noqa: BLE001
        render_jinja_template = None
    for name, msgs, gen in chat_cases():
        text = render(smol_template, msgs, gen)
        if render_jinja_template is not None:
            rendered, _ = render_jinja_template(conversations=[msgs], chat_template=smol_template,
                                                add_generation_prompt=gen)
            assert rendered[0] == text, (name, rendered[0], text)
        out.append({"template": "smollm2", "case": name, "messages": msgs, "add_generation_prompt": gen,
                    "expected": text})
    for name, msgs, gen in chat_cases():
        # tessera leaves BOS to the encoder: render with an empty bos_token.
        text = render(LLAMA3_TEMPLATE, msgs, gen, bos_token="")
        out.append({"template": "llama3", "case": name, "messages": msgs, "add_generation_prompt": gen,
                    "expected": text})
    for name, msgs, gen in chat_cases():
        try:
            text = render(LLAMA2_TEMPLATE, msgs, gen, bos_token="<s>", eos_token="</s>")
        except Exception as e:  # noqa: BLE001
            out.append({"template": "llama2", "case": name, "messages": msgs, "add_generation_prompt": gen,
                        "error": str(e)})
            continue
        # The first BOS is the encoder's (add_bos); later turns keep "<s>" as text.
        assert text.startswith("<s>")
        text = text[3:]
        out.append({"template": "llama2", "case": name, "messages": msgs, "add_generation_prompt": gen,
                    "expected": text})
    # A conversation Llama 2 refuses (roles do not alternate).
    bad = [u1, u2]
    try:
        render(LLAMA2_TEMPLATE, bad, True, bos_token="<s>", eos_token="</s>")
        raise AssertionError("expected an exception")
    except Exception as e:  # noqa: BLE001
        out.append({"template": "llama2", "case": "not_alternating", "messages": bad,
                    "add_generation_prompt": True, "error": str(e)})
    return {"templates": {"smollm2": smol_template, "llama3": LLAMA3_TEMPLATE, "llama2": LLAMA2_TEMPLATE},
            "cases": out}


# ---------------------------------------------------------------------------------------------


def main():
    corpus = build_corpus()
    assert len(corpus) >= 200, len(corpus)
    with open(os.path.join(HERE, "tokenizer_corpus.json"), "w", encoding="utf-8") as f:
        json.dump(corpus, f, ensure_ascii=False, indent=0)
        f.write("\n")
    print(f"corpus: {len(corpus)} strings")

    tok, hf_gguf, smol_template = build_smollm2()
    tok.save(os.path.join(HERE, "smollm2_tokenizer.json"), pretty=False)
    entries = write_golden(os.path.join(HERE, "tokenizer_golden_smollm2.json"), "smollm2",
                           "models/SmolLM2-135M-Instruct.Q4_1.gguf via tokenizers "
                           "(Digits(individual)+ByteLevel, as the model's tokenizer.json)",
                           hf_encoder(tok), lambda ids: tok.decode(ids, skip_special_tokens=False), corpus)
    if hf_gguf is not None:
        diff = [e["text"] for e in entries if hf_gguf.encode(e["text"], add_special_tokens=False).ids != e["ids"]]
        print(f"smollm2: transformers' GGUF tokenizer differs on {len(diff)} strings {diff[:5]!r}")

    sp, spm_tok, pieces, scores, types = build_spm_tiny(corpus)
    spm_tok.save(os.path.join(HERE, "spm_tiny_tokenizer.json"), pretty=False)
    entries = write_golden(os.path.join(HERE, "tokenizer_golden_spm_tiny.json"), "spm_tiny",
                           "spm_tiny.model (sentencepiece BPE, byte_fallback): sentencepiece's "
                           "dummy-prefix rule on the first text fragment, HF's added-token split",
                           spm_encoder(spm_tok), lambda ids: spm_tok.decode(ids, skip_special_tokens=False),
                           corpus, lambda s: {"ids_hf": hf_encoder(spm_tok)(s, True)})
    # With no special-token matching this is exactly sentencepiece.
    diff = [e["text"] for e in entries if e["ids_nospecial"] != sp.encode(e["text"])]
    print(f"spm_tiny: ids_nospecial differ from sentencepiece on {len(diff)} strings {diff[:5]!r}")
    diff = [e["text"] for e in entries if e["ids"] != e["ids_hf"]]
    print(f"spm_tiny: ids differ from plain HF (Metaspace skips the prefix before a space) on "
          f"{len(diff)} strings, all starting with a space: {all(d.startswith(' ') for d in diff)}")
    write_spm_gguf(os.path.join(HERE, "spm_tiny.gguf"), pieces, scores, types, LLAMA2_TEMPLATE)

    bpe = build_bpe_tiny(corpus)
    bpe.save(os.path.join(HERE, "bpe_tiny_tokenizer.json"), pretty=False)
    write_golden(os.path.join(HERE, "tokenizer_golden_bpe_tiny.json"), "bpe_tiny",
                 "trained by this script with tokenizers (Llama 3 pre-tokenizer, ignore_merges)",
                 hf_encoder(bpe), lambda ids: bpe.decode(ids, skip_special_tokens=False), corpus,
                 lossy="<mask>")
    write_bpe_gguf(os.path.join(HERE, "bpe_tiny.gguf"), bpe)

    golden = build_chat_golden(smol_template)
    with open(os.path.join(HERE, "chat_golden.json"), "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"chat: {len(golden['cases'])} cases")


if __name__ == "__main__":
    main()
