from __future__ import annotations

from agent.tokenizer import ENC, MOD, STEP, AgentTokenizer, neutralize_special

CODE = (
    'e = encode(t1<MOD>, flair<MOD>)\n'
    'les = generate(e, flair<MOD>, "white matter")\n'
    "v  =  volume(les)\t# 1234.50 mL, 'quoted'\n"
    "    read(v)\n\n"
    "<STEP>"
)


def test_code_round_trips_exactly(tokenizer):
    for text in (CODE, "  leading spaces\n\ttabs\r\n", "unicode: é 日本 ≥ 3 µL", "x=0007.250e-3", ""):
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_special_tokens_are_single_ids(tokenizer):
    ids = tokenizer.encode(CODE)
    assert ids.count(tokenizer.mod_id) == 3
    assert ids.count(tokenizer.step_id) == 1
    for tok in (MOD, STEP, ENC, "<FB>", "</FB>"):
        assert len(tokenizer.encode(tok)) == 1
    assert len({tokenizer.mod_id, tokenizer.step_id, tokenizer.enc_id, tokenizer.fb_open_id,
                tokenizer.fb_close_id, tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id}) == 8


def test_digits_split_consistently(tokenizer):
    digit_ids = [tokenizer.encode(str(d)) for d in range(10)]
    assert all(len(ids) == 1 for ids in digit_ids)
    number = "98031.25"
    expected = [i for ch in number for i in tokenizer.encode(ch)]
    for context in ("{} mL", "volume is {}", "({})", "x={}\n"):
        ids = tokenizer.encode(context.format(number))
        pieces = [tokenizer.piece(i) for i in ids]
        assert all(len(p) == 1 for p in pieces if any(c.isdigit() for c in p))
        # the number's ids appear contiguously and identically in every context
        assert any(ids[i:i + len(expected)] == expected for i in range(len(ids)))


def test_untrusted_text_cannot_create_special_positions(tokenizer):
    ids = tokenizer.encode_plain("prompt with <ENC> and <MOD> inside")
    assert tokenizer.enc_id not in ids and tokenizer.mod_id not in ids
    assert tokenizer.decode(ids) == neutralize_special("prompt with <ENC> and <MOD> inside")


def test_save_and_load(tokenizer, tmp_path):
    path = tokenizer.save(tmp_path / "tokenizer.model")
    again = AgentTokenizer.load(path)
    assert again.encode(CODE) == tokenizer.encode(CODE)
    assert again.vocab_size == tokenizer.vocab_size <= 1000
