#!/usr/bin/env python3
"""SentencePiece reference for kvdial's "llama" (SPM) tokenizer.

Two steps, both deterministic:

  model    Trains a small SentencePiece BPE model with the `sentencepiece` package, set up like
           Llama's tokenizer.model (byte_fallback, identity normalization, no whitespace clean-up,
           dummy prefix, digits split, whitespace-only pieces allowed, unk/bos/eos = 0/1/2), on the
           first half of the non-empty lines of WikiText-2's test split, plus one user-defined
           symbol "<|sep|>". Writes it as a vocabulary-only GGUF with the `gguf` package
           (tokenizer.ggml.model = llama, tokens, scores, token_type, bos/eos/unk ids, add_bos_token,
           add_eos_token, add_space_prefix; the few llama.* keys llama.cpp needs to open a vocab-only
           file; no tensors). The training text is read from the data dir and never stored.

  fixture  For every case (edge-case strings written for this project, and non-empty WikiText-2 test
           lines from the half not used for training, named by 1-based line number and SHA-256):
           `sp` = sentencepiece's encode (no BOS), `sp_decoded` = its decode of those ids, and, when
           --llama-tokenize names a llama.cpp `llama-tokenize` binary, `llama_cpp` /
           `llama_cpp_special` = its ids with --no-bos, without / with parsing special tokens, also for
           200 seeded random byte strings (invalid UTF-8 too; `random`, as hex).

    python3 tools/reference/make_spm_reference.py model --data-dir /work/shared/data \
        --out tests/fixtures/spm/spm_bpe4k.gguf
    python3 tools/reference/make_spm_reference.py fixture --data-dir /work/shared/data \
        --gguf tests/fixtures/spm/spm_bpe4k.gguf --out tests/fixtures/spm_tokenizer_ref.json \
        [--llama-tokenize /work/ref/llama.cpp/build/bin/llama-tokenize]
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

WIKI = "wikitext-2/wiki.test.raw"
VOCAB_SIZE = 4000
USER_DEFINED = ["<|sep|>"]
N_DATA_CASES = 48


def wiki_lines(data_dir):
    """(1-based line number, text without its CRLF / LF) of each non-empty line of the test split."""
    with open(os.path.join(data_dir, WIKI), "rb") as f:
        raw = f.read().decode("utf-8").split("\n")
    if raw and raw[-1] == "":
        raw.pop()
    out = []
    for i, line in enumerate(raw, 1):
        line = line[:-1] if line.endswith("\r") else line
        if line.strip():
            out.append((i, line))
    return out


def model_proto_bytes(data_dir, workdir):
    import sentencepiece as spm

    lines = wiki_lines(data_dir)
    train = lines[: len(lines) // 2]
    path = os.path.join(workdir, "train.txt")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for _, line in train:
            f.write(line + "\n")
    prefix = os.path.join(workdir, "spm")
    spm.SentencePieceTrainer.train(
        input=path, model_prefix=prefix, model_type="bpe", vocab_size=VOCAB_SIZE, byte_fallback=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
        split_digits=True, allow_whitespace_only_pieces=True, character_coverage=0.9995,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, user_defined_symbols=USER_DEFINED,
        max_sentence_length=1 << 16, num_threads=1, minloglevel=2)
    return prefix + ".model", train[-1][0]


def cmd_model(args):
    import gguf
    import sentencepiece as spm

    with tempfile.TemporaryDirectory() as tmp:
        model_file, last_train_line = model_proto_bytes(args.data_dir, tmp)
        sp = spm.SentencePieceProcessor(model_file=model_file)
        tokens, scores, types = [], [], []
        for i in range(sp.get_piece_size()):
            piece = sp.id_to_piece(i)
            tokens.append(piece)
            scores.append(sp.get_score(i))
            if sp.is_unknown(i):
                t = gguf.TokenType.UNKNOWN
            elif sp.is_control(i):
                t = gguf.TokenType.CONTROL
            elif sp.is_byte(i):
                t = gguf.TokenType.BYTE
            elif sp.is_unused(i):
                t = gguf.TokenType.UNUSED
            elif piece in USER_DEFINED:
                t = gguf.TokenType.USER_DEFINED
            else:
                t = gguf.TokenType.NORMAL
            types.append(int(t))
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        if args.keep_model:
            with open(model_file, "rb") as src, open(args.keep_model, "wb") as dst:
                dst.write(src.read())

    w = gguf.GGUFWriter(args.out, "llama")
    w.add_name("kvdial SentencePiece BPE 4k reference vocabulary (synthetic, vocab only)")
    w.add_description(
        f"sentencepiece BPE, vocab {VOCAB_SIZE}, byte_fallback, trained on non-empty lines up to line "
        f"{last_train_line} of {WIKI} (WikiText-2, CC BY-SA 3.0); no weights")
    # llama.cpp opens a vocab-only file only with its hyper-parameters present.
    w.add_context_length(128)
    w.add_embedding_length(32)
    w.add_block_count(1)
    w.add_feed_forward_length(64)
    w.add_head_count(1)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(32)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {args.out}: {len(tokens)} tokens, {sum(t == 6 for t in types)} byte tokens, "
          f"trained on lines <= {last_train_line}")


# Edge cases written for this project (no dataset text).
EDGE_CASES = [
    "", " ", "  ", "   ", "a", "Hello world", " Hello world", "Hello world ", "Hello  world",
    "Hello   world   ", "   leading spaces", "trailing spaces   ", "\n", "\n\n", "line one\nline two",
    " \n ", "tab\there", "\t\tindented", "a\r\nb", "ends with CRLF\r\n", "mixed \t \n whitespace",
    "0", "7", "123", "3.14159", "1,000,000", "2024-05-17", "x = 42 + 17", "9" * 40, "v1.2.3-rc4",
    "Hello, world!", "(a) [b] {c}", "...", "!!!???", '"quoted" and \'single\'', "it's don't they're we'll",
    "@#$%^&*~`|\\", "a--b__c", "e.g. i.e. etc.",
    "café", "naïve résumé", "Ångström", "e\u0301 combining", "ß Straße", "日本語のテキスト", "中文",
    "한국어", "Привет мир", "مرحبا", "नमस्ते", "😀", "👍🏽", "👨‍👩‍👧", "🇫🇷", "I ❤ unicode ☃",
    "\u00a0no-break space", "ideographic\u3000space", "\u2581literal lower block", "a\u2581b",
    "\x01\x1f\x7f control chars",
    "<s>", "</s>", "<unk>", "<s>Hello</s>", "a<s>b", "<0x41>", "<|sep|>", "a<|sep|>b", " <|sep|> x",
    "<|sep|><|sep|>", "<|sep|>\n", "<|sep", "<s> <s>",
    "Pneumonoultramicroscopicsilicovolcanoconiosis", "supercalifragilisticexpialidocious" * 5,
    "x" * 1000, "ab" * 300, "\u00e9" * 100, "z" * 17,
    "def f(x):\n    return x * 2\n", '{"key": [1, 2, 3], "b": null}', "https://example.com/path?q=1&r=2",
    "<b>bold</b> &amp; more", "# Heading\n\n* item one\n* item two",
    "The quick brown fox jumps over the lazy dog.",
]


def random_byte_strings(n, seed=12345):
    """Strings of pieces that stress the rules: spaces, "▁", specials, multi-byte characters, invalid
    UTF-8 (stray lead and continuation bytes) and random bytes; as bytes."""
    import random

    rng = random.Random(seed)
    alphabet = [b"a", b"e", b"th", b"the", b" ", b"  ", b"\n", b"\t", b"1", b".", b",", "é".encode(), "中".encode(),
                "😀".encode(), "\u2581".encode(), b"<", b"s>", b"<s>", b"</s>", b"<|sep|>", b"<|sep", b"\xff",
                b"\x80", b"\xc3", b"\xe2\x96", b"\xf0\x9f"]
    out = []
    for k in range(n):
        if k % 4 == 0:
            out.append(bytes(rng.randrange(1, 256) for _ in range(rng.randrange(0, 24))))
        else:
            out.append(b"".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 16))))
    return out


def llama_tokenize(binary, gguf_path, text, parse_special):
    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
        f.write(text if isinstance(text, bytes) else text.encode("utf-8"))
        name = f.name
    try:
        cmd = [binary, "-m", gguf_path, "-f", name, "--ids", "--no-bos", "--no-escape", "--log-disable"]
        if not parse_special:
            cmd.append("--no-parse-special")
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    finally:
        os.unlink(name)
    return json.loads(out.strip().splitlines()[-1])


def cmd_fixture(args):
    import sentencepiece as spm

    with tempfile.TemporaryDirectory() as tmp:
        model_file, last_train_line = model_proto_bytes(args.data_dir, tmp)
        sp = spm.SentencePieceProcessor(model_file=model_file)
    # The fixture's ids must be those of the committed GGUF's vocabulary.
    import gguf

    reader = gguf.GGUFReader(args.gguf)
    field = reader.fields["tokenizer.ggml.tokens"]
    gguf_tokens = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
    assert gguf_tokens == [sp.id_to_piece(i) for i in range(sp.get_piece_size())], "GGUF is not this model"

    held_out = [(n, t) for n, t in wiki_lines(args.data_dir) if n > last_train_line]
    step = len(held_out) / N_DATA_CASES
    picks = [held_out[int(k * step)] for k in range(N_DATA_CASES)]

    cases = [{"text": t} for t in EDGE_CASES]
    cases += [{"source": {"file": WIKI, "line": n, "field": "line"},
               "text_sha256": hashlib.sha256(t.encode("utf-8")).hexdigest(), "_text": t} for n, t in picks]
    n_diff = 0
    for c in cases:
        text = c.pop("_text", None)
        text = c["text"] if text is None else text
        c["sp"] = sp.encode(text)
        c["sp_decoded"] = sp.decode(c["sp"])
        if args.llama_tokenize:
            c["llama_cpp"] = llama_tokenize(args.llama_tokenize, args.gguf, text, False)
            c["llama_cpp_special"] = llama_tokenize(args.llama_tokenize, args.gguf, text, True)
            n_diff += c["llama_cpp"] != c["sp"]
    with open(args.gguf, "rb") as f:
        gguf_sha = hashlib.sha256(f.read()).hexdigest()
    with open(os.path.join(args.data_dir, WIKI), "rb") as f:
        wiki_bytes = f.read()
    wiki_sha = hashlib.sha256(wiki_bytes).hexdigest()

    def ids_sha(ids):
        return hashlib.sha256(b"".join(int(i).to_bytes(4, "little", signed=True) for i in ids)).hexdigest()

    # The whole file as one text, bytes as stored (CRLF kept): count and SHA-256 of the int32 LE ids.
    whole = {"file": WIKI}
    ids = sp.encode(wiki_bytes.decode("utf-8"))
    whole.update(sp_count=len(ids), sp_sha256=ids_sha(ids))
    if args.llama_tokenize:
        ids = llama_tokenize(args.llama_tokenize, args.gguf, wiki_bytes.decode("utf-8"), False)
        whole.update(llama_cpp_count=len(ids), llama_cpp_sha256=ids_sha(ids))
    import importlib.metadata as md

    # Random byte strings (llama.cpp only: sentencepiece takes only valid text), stored as hex.
    random_cases = []
    if args.llama_tokenize:
        for b in random_byte_strings(200):
            random_cases.append({"hex": b.hex(), "llama_cpp": llama_tokenize(args.llama_tokenize, args.gguf, b, False),
                                 "llama_cpp_special": llama_tokenize(args.llama_tokenize, args.gguf, b, True)})

    doc = {
        "command": " ".join(["python3", "tools/reference/make_spm_reference.py"] + sys.argv[1:]),
        "generator": f"sentencepiece {md.version('sentencepiece')}, gguf {md.version('gguf')}"
                     + (", llama.cpp llama-tokenize (tag b4747)" if args.llama_tokenize else ""),
        "gguf": os.path.relpath(args.gguf), "gguf_sha256": gguf_sha,
        "data_files": {WIKI: wiki_sha},
        "note": "sp = SentencePieceProcessor.encode(text) (no BOS), sp_decoded = its decode. llama_cpp / "
                "llama_cpp_special = llama-tokenize --no-bos --no-escape with --no-parse-special / without. "
                "Data cases name a line (1-based, CRLF stripped) of a file in the data dir and its SHA-256.",
        "whole_file": whole,
        "random": random_cases,
        "cases": cases,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("{\n")
        for k, v in doc.items():
            if k == "random":
                f.write('"random": [\n' + ",\n".join(json.dumps(c) for c in v) + "\n],\n")
            elif k != "cases":
                f.write(f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)},\n")
        f.write('"cases": [\n')
        f.write(",\n".join(json.dumps(c, ensure_ascii=False) for c in cases))
        f.write("\n]}\n")
    print(f"wrote {args.out}: {len(cases)} cases"
          + (f", {n_diff} where llama.cpp and sentencepiece differ" if args.llama_tokenize else "") + f"; whole file {whole}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("model")
    m.add_argument("--data-dir", default="/work/shared/data")
    m.add_argument("--out", required=True)
    m.add_argument("--keep-model", help="also write the sentencepiece .model file here")
    fx = sub.add_parser("fixture")
    fx.add_argument("--data-dir", default="/work/shared/data")
    fx.add_argument("--gguf", required=True)
    fx.add_argument("--out", required=True)
    fx.add_argument("--llama-tokenize", help="path of a llama.cpp llama-tokenize binary (optional)")
    args = ap.parse_args()
    cmd_model(args) if args.cmd == "model" else cmd_fixture(args)


if __name__ == "__main__":
    main()
