"""CLIP tokenizer: ids equal open_clip's and Hugging Face's; every vocabulary source; fallback.

Every test reads open_clip's bundled BPE vocabulary: the module is an oracle module.
"""

import gzip
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from jaxclip_fs.clip import tokenizer as tk
from jaxclip_fs.errors import CheckpointError, ConfigError
from oracles import need

pytestmark = pytest.mark.oracle
open_clip = need("open_clip")
oc_tokenizer = need("open_clip.tokenizer")

BPE_PATH = oc_tokenizer.default_bpe()

# Strings on which OpenAI's cleaning (ftfy, html.unescape) and HF's (NFC) agree.
COMMON_STRINGS = [
    "a photo of a dog.",
    "A PHOTO of the LARGE Golden-Retriever!!!",
    "it's, can't; they're we've I'm you'll he'd IT'S",
    "what?!... (hello) [world] {x} <tag> #1 @user $5 %&*",
    "1,234.56 and 2024-01-31; 3.14159e-10",
    "café naïve résumé Ærøskøbing Straße",
    "cafe\u0301 (decomposed accent)",
    "東京タワー 北京 서울 Москва ελληνικά العربية",
    "emoji 😀👍🏽 👩‍👩‍👧 🇯🇵 ✈️",
    "  lots \t of\n\n whitespace   ",
    "",
    "   ",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "<|endoftext|> special token literal <|startoftext|>",
    " ".join(["a photo of a cat"] * 30),  # > 77 tokens: truncated
    "x" * 500,
]
# Strings where HF's tokenizer (no ftfy, no HTML unescaping) differs from OpenAI's.
OPENAI_ONLY_STRINGS = [
    "&amp; &lt;b&gt;bold&lt;/b&gt; &amp;amp; &quot;q&quot; &#39;s",
    "x < y &amp;amp; z",  # a literal '<' stops ftfy's own unescaping: both passes matter
    "The Mona Lisa doesn’t have “eyebrows”.",
    "Ã©tÃ© mojibake Ã¢â‚¬â„¢",
    "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ １２３",
    "control\x00chars\x07here",
]


def _open_clip_comparable(texts):
    """open_clip spells literal special tokens <start_of_text>, OpenAI <|startoftext|>."""
    return [t for t in texts if "<|" not in t]


@pytest.fixture(scope="module")
def tok():
    return tk.tokenizer_from_bpe_file(BPE_PATH)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """vocab.json + merges.txt as on the hub, built from the bundled BPE file."""
    directory = tmp_path_factory.mktemp("hf_tok")
    reference = oc_tokenizer.SimpleTokenizer(BPE_PATH)
    vocab = dict(reference.encoder)
    vocab["<|startoftext|>"] = vocab.pop("<start_of_text>")
    vocab["<|endoftext|>"] = vocab.pop("<end_of_text>")
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    lines = gzip.open(BPE_PATH, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n",
                                          encoding="utf-8")
    return directory


@pytest.fixture
def no_installed_sources(monkeypatch, tmp_path):
    """No env var, no bundling package, an empty HF cache."""
    import huggingface_hub.constants

    monkeypatch.delenv(tk.BPE_ENV_VAR, raising=False)
    monkeypatch.setattr(tk, "BUNDLING_PACKAGES", ())
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))


def test_ids_equal_open_clip_tokenize(tok):
    texts = _open_clip_comparable(COMMON_STRINGS + OPENAI_ONLY_STRINGS)
    ours = tok(texts)
    assert ours.dtype == np.int32 and ours.shape == (len(texts), 77)
    np.testing.assert_array_equal(ours, open_clip.tokenize(texts).numpy())


def test_encode_equals_simple_tokenizer_and_truncation_keeps_eot(tok):
    reference = oc_tokenizer.SimpleTokenizer(BPE_PATH)
    for text in _open_clip_comparable(COMMON_STRINGS + OPENAI_ONLY_STRINGS):
        assert tok.encode(text) == reference.encode(text), text
    long = tok([COMMON_STRINGS[-2]])[0]
    assert len(tok.encode(COMMON_STRINGS[-2])) > 75
    assert long[0] == 49406 and long[-1] == 49407 and np.all(long[1:-1] != 0)


@pytest.mark.parametrize("context_length", [2, 5, 16])
def test_other_context_lengths_match_open_clip(tok, context_length):
    texts = _open_clip_comparable(COMMON_STRINGS)
    np.testing.assert_array_equal(
        tok(texts, context_length=context_length),
        open_clip.tokenize(texts, context_length=context_length).numpy())


def test_ids_equal_hf_clip_tokenizer(hf_dir, tok):
    from transformers import CLIPTokenizer

    hf = CLIPTokenizer.from_pretrained(str(hf_dir))
    ours_from_hf = tk.load_tokenizer(hf_dir)
    for text in COMMON_STRINGS:
        expected = hf(text, truncation=True, max_length=77)["input_ids"]
        for ours in (tok, ours_from_hf):
            row = ours([text])[0]
            assert row[:len(expected)].tolist() == expected, text
            assert np.all(row[len(expected):] == 0)
        assert tok.encode(text) == hf(text, add_special_tokens=False)["input_ids"], text


def test_openai_cleaning_differs_from_hf_where_documented(tok):
    """The OpenAI-only strings really are cleaned (HTML, mojibake, quotes) by us."""
    assert tok.encode("&amp;amp;") == tok.encode("&")
    assert tok.encode("Ã©tÃ©") == tok.encode("été")
    assert tok.encode("doesn’t") == tok.encode("doesn't")


def test_truncate_false_raises_one_line_error(tok):
    text = "a very long caption\nwith a newline " + "word " * 100
    with pytest.raises(ConfigError) as err:
        tok([text], truncate=False)
    message = str(err.value)
    assert "\n" not in message and "a very long caption" in message and "77" in message
    fits = " ".join(["a"] * 75)  # sot + 75 + eot = 77: no error
    np.testing.assert_array_equal(tok([fits], truncate=False), open_clip.tokenize([fits]).numpy())
    with pytest.raises(ConfigError):
        tok([fits + " a"], truncate=False)


def test_bpe_results_are_cached(tok):
    tok._merge_word.cache_clear()
    tok(["a photo of a dog."] * 3)
    info = tok._merge_word.cache_info()
    # 6 pre-tokens (a photo of a dog .), 5 distinct, 3 times: 18 lookups, 5 merged.
    assert info.misses == 5 and info.hits == 13


def test_loads_from_hf_directory_and_from_a_file_in_it(hf_dir, tok):
    (hf_dir / "model.safetensors").write_bytes(b"")  # a checkpoint file next to the vocab
    for source in (hf_dir, hf_dir / "model.safetensors"):
        loaded = tk.load_tokenizer(source)
        assert "vocab.json" in loaded.name and loaded.is_clip_vocab
        np.testing.assert_array_equal(loaded(COMMON_STRINGS), tok(COMMON_STRINGS))


def test_loads_tokenizer_json_written_by_transformers(hf_dir, tmp_path, tok):
    from transformers import CLIPTokenizer

    CLIPTokenizer.from_pretrained(str(hf_dir)).save_pretrained(str(tmp_path))
    assert os.path.isfile(tmp_path / "tokenizer.json")
    loaded = tk.load_tokenizer(tmp_path)
    assert "tokenizer.json" in loaded.name
    np.testing.assert_array_equal(loaded(COMMON_STRINGS), tok(COMMON_STRINGS))


def test_loads_bpe_gz_from_directory_file_and_env_var(tmp_path, monkeypatch, tok,
                                                      no_installed_sources):
    shutil.copy(BPE_PATH, tmp_path / tk.BPE_FILENAME)
    monkeypatch.setenv(tk.BPE_ENV_VAR, str(tmp_path / tk.BPE_FILENAME))
    empty = tmp_path / "ckpt_without_vocab"
    empty.mkdir()
    for source in (tmp_path, tmp_path / tk.BPE_FILENAME, empty, None):  # empty dir -> env var
        loaded = tk.load_tokenizer(source)
        assert str(tmp_path / tk.BPE_FILENAME) in loaded.name
        np.testing.assert_array_equal(loaded(COMMON_STRINGS), tok(COMMON_STRINGS))


def test_env_var_may_name_an_hf_directory(hf_dir, monkeypatch, tok, no_installed_sources):
    monkeypatch.setenv(tk.BPE_ENV_VAR, str(hf_dir))
    loaded = tk.load_tokenizer()
    assert str(hf_dir) in loaded.name
    np.testing.assert_array_equal(loaded(COMMON_STRINGS), tok(COMMON_STRINGS))


def test_default_finds_installed_open_clip_file(monkeypatch, tok):
    monkeypatch.delenv(tk.BPE_ENV_VAR, raising=False)
    loaded = tk.load_tokenizer()
    assert os.path.join("open_clip", tk.BPE_FILENAME) in loaded.name
    np.testing.assert_array_equal(loaded(COMMON_STRINGS), tok(COMMON_STRINGS))


def test_finds_openai_clip_package_file_without_importing_it(tmp_path, monkeypatch, tok,
                                                             no_installed_sources):
    package = tmp_path / "site" / "clip"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    shutil.copy(BPE_PATH, package / tk.BPE_FILENAME)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(tk, "BUNDLING_PACKAGES", ("not_a_package_xyz", "clip"))
    loaded = tk.load_tokenizer()
    assert str(package / tk.BPE_FILENAME) in loaded.name and "clip" not in sys.modules
    np.testing.assert_array_equal(loaded(COMMON_STRINGS), tok(COMMON_STRINGS))


def test_loading_does_not_import_open_clip():
    code = ("import sys; from jaxclip_fs.clip.tokenizer import load_tokenizer; "
            "t = load_tokenizer(); assert t.is_clip_vocab, t.name; "
            "assert 'open_clip' not in sys.modules and 'torch' not in sys.modules")
    env = {k: v for k, v in os.environ.items() if k != tk.BPE_ENV_VAR}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_finds_hub_cache(hf_dir, tmp_path, monkeypatch, tok, no_installed_sources):
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    repo = cache / ("models--" + tk.HUB_REPO.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(hf_dir, repo / "snapshots" / commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    loaded = tk.load_tokenizer()
    assert str(repo / "snapshots" / commit / "vocab.json") in loaded.name
    np.testing.assert_array_equal(loaded(COMMON_STRINGS), tok(COMMON_STRINGS))


def test_fallback_when_nothing_is_found(tmp_path, no_installed_sources):
    empty = tmp_path / "ckpt"
    empty.mkdir()
    fallback = tk.load_tokenizer(empty)
    assert not fallback.is_clip_vocab and "NOT CLIP" in fallback.name and "\n" not in fallback.name
    texts = COMMON_STRINGS + OPENAI_ONLY_STRINGS
    ids = fallback(texts)
    assert ids.shape == (len(texts), 77) and ids.max() < 49408
    assert np.all(ids[:, 0] == 49406)
    # Independent expectation: CLIP with no merges -- every pre-token's byte
    # symbols under CLIP's own ids 0..511, last one with </w>.
    reference = oc_tokenizer.SimpleTokenizer(BPE_PATH)
    for text in _open_clip_comparable(texts):
        expected = []
        for piece in reference.pat.findall(oc_tokenizer._clean_lower(text)):
            symbols = [reference.byte_encoder[b] for b in piece.encode("utf-8")]
            symbols[-1] += "</w>"
            expected.extend(reference.encoder[s] for s in symbols)
        assert fallback.encode(text) == expected, text
        row = [49406, *expected, 49407][:77]
        row[-1] = 49407
        assert ids[texts.index(text), :len(row)].tolist() == row


def test_source_errors_are_one_line_and_name_the_file(tmp_path, monkeypatch, hf_dir):
    cases = []
    with pytest.raises(CheckpointError) as err:
        tk.load_tokenizer(tmp_path / "nope")
    cases.append((err, "nope"))

    only_vocab = tmp_path / "only_vocab"
    only_vocab.mkdir()
    shutil.copy(hf_dir / "vocab.json", only_vocab / "vocab.json")
    with pytest.raises(CheckpointError) as err:
        tk.load_tokenizer(only_vocab)
    cases.append((err, "merges.txt"))

    bad_gz = tmp_path / "bad" / tk.BPE_FILENAME
    bad_gz.parent.mkdir()
    bad_gz.write_bytes(b"not gzip at all")
    with pytest.raises(CheckpointError) as err:
        tk.load_tokenizer(bad_gz.parent)
    cases.append((err, str(bad_gz)))

    short_gz = tmp_path / "short.txt.gz"
    with gzip.open(short_gz, "wt") as f:
        f.write("header\ni n\nt h\n")
    with pytest.raises(CheckpointError) as err:
        tk.load_tokenizer(short_gz)
    cases.append((err, str(short_gz)))

    broken = tmp_path / "broken_vocab"
    broken.mkdir()
    (broken / "vocab.json").write_text('{"a": 0')
    shutil.copy(hf_dir / "merges.txt", broken / "merges.txt")
    with pytest.raises(CheckpointError) as err:
        tk.load_tokenizer(broken)
    cases.append((err, str(broken / "vocab.json")))

    monkeypatch.setenv(tk.BPE_ENV_VAR, str(tmp_path / "missing.txt.gz"))
    with pytest.raises(ConfigError) as err:
        tk.load_tokenizer()
    cases.append((err, tk.BPE_ENV_VAR))

    for err, name in cases:
        assert name in str(err.value) and "\n" not in str(err.value), str(err.value)
