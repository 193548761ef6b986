"""Pre-training (tokenizer, model, loss) and the embedded base-model cache."""

from __future__ import annotations

import gzip
import importlib.util
import json
import threading
import time
import unicodedata
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from reviewtune import base_models
from reviewtune.base_models import (
    base_model_dir,
    base_model_hash,
    cache_root,
    default_pretrain_args,
    ensure_base_model,
)
from reviewtune.models.pretraining import pretrain, read_corpus, read_corpus_counts, train_tokenizer
from reviewtune.training.arguments import PretrainArguments

ROOT = Path(__file__).resolve().parent.parent
KOREAN = ["배송이 빨라요 ㅋㅋ 근데 사이즈는 좀 작아요ㅠㅠ", "색상  예뻐요!! 😀", "###입력: 가격 착해요\n###출력: 가격1"]


@pytest.fixture
def tiny_args(tiny_model_config):
    def make(kind: str, **overrides) -> PretrainArguments:
        return PretrainArguments(kind=kind, **{**tiny_model_config, **overrides})

    return make


# ------------------------------------------------------------------------------------ pre-training


@pytest.mark.parametrize("kind", ["causal", "roberta"])
def test_tiny_pretraining_loss_falls_and_loads_with_auto_classes(
    kind, tiny_causal_dir, tiny_roberta_dir, tiny_model_config
):
    model_dir = tiny_causal_dir if kind == "causal" else tiny_roberta_dir
    log = json.loads((model_dir / "pretrain_log.json").read_text(encoding="utf-8"))
    s = log["summary"]
    assert s["steps"] == tiny_model_config["max_steps"] and not s["stopped_by_time_budget"]
    # Starts near the uniform loss ln(V) and falls clearly, on held-out blocks as well as in training.
    assert abs(s["initial_eval_loss"] - s["uniform_loss"]) < 1.0
    assert s["final_eval_loss"] < s["initial_eval_loss"] - 0.5
    assert s["last_loss"] < s["first_loss"] - 0.5
    assert [h["step"] for h in log["log_history"] if "eval_loss" in h] == [0, s["steps"]]
    assert log["provenance"]["versions"]["transformers"] and log["provenance"]["data_files"]["corpus"]["sha256"]
    assert (model_dir / "pretrain_loss.png").stat().st_size > 1000
    assert (model_dir / "model.safetensors").is_file()
    assert not list(model_dir.glob("*.bin"))

    tok = AutoTokenizer.from_pretrained(model_dir)
    batch = tok(KOREAN[:2], return_tensors="pt", padding=True)
    if kind == "causal":
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        assert type(model).__name__ == "LlamaForCausalLM" and model.config.use_cache
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        with torch.no_grad():
            loss = model(**batch, labels=labels).loss
        assert torch.isfinite(loss)
        out = model.generate(**batch, max_new_tokens=3, do_sample=False)
        assert out.shape[0] == 2 and batch["input_ids"].shape[1] < out.shape[1] <= batch["input_ids"].shape[1] + 3
    else:
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=3)
        assert type(model).__name__ == "RobertaForSequenceClassification"
        with torch.no_grad():
            logits = model(**batch).logits
        assert logits.shape == (2, 3) and torch.isfinite(logits).all()


def test_sliding_window_layers_see_only_the_last_tokens(tiny_corpus_file, tmp_path, tiny_args):
    """A causal base with sliding-window bottom layers is a Qwen2 that reloads as one: the bottom layer's output at
    a position ignores a token ``sliding_window`` places back, the full-attention layer above it does not."""
    args = tiny_args("causal", corpus_file=str(tiny_corpus_file), max_steps=2, num_layers=2, sliding_window_layers=1,
                     sliding_window=3)  # fmt: skip
    pretrain(args, tmp_path / "swa")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "swa").eval()
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.config.layer_types == ["sliding_attention", "full_attention"] and model.config.sliding_window == 3
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    changed = ids.clone()
    changed[0, 2] = 13  # 3 places before the last token: outside the window of 3 (the token and the 2 before it)
    with torch.no_grad():
        h, h_changed = (model(input_ids=x, output_hidden_states=True).hidden_states for x in (ids, changed))
    assert torch.equal(h[1][0, 5:], h_changed[1][0, 5:])  # layer 0 (sliding): positions 5.. never see position 2
    assert not torch.allclose(h[1][0, 4], h_changed[1][0, 4])  # position 4 does
    assert not torch.allclose(h[2][0, -1], h_changed[2][0, -1])  # layer 1 (full) sees everything
    with pytest.raises(ValueError, match="sliding_window_layers"):
        tiny_args("roberta", sliding_window_layers=1)


@pytest.mark.parametrize("kind", ["causal", "roberta"])
def test_embeddings_only_pretraining_leaves_the_blocks_at_their_initialisation(kind, tiny_corpus_file, tmp_path,
                                                                              tiny_args):  # fmt: skip
    """Two budgets (2 and 8 steps) from one seed: every non-embedding weight identical, the embeddings moved."""
    from safetensors.torch import load_file

    weights, summaries = {}, {}
    for steps in (2, 8):
        args = tiny_args(kind, corpus_file=str(tiny_corpus_file), max_steps=steps, trained_modules="embeddings")
        summaries[steps] = pretrain(args, tmp_path / str(steps))
        weights[steps] = load_file(tmp_path / str(steps) / "model.safetensors")
    assert summaries[8]["final_eval_loss"] < summaries[8]["initial_eval_loss"]
    embeddings = {n for n in weights[8] if "embed" in n}
    assert embeddings and len(embeddings) < len(weights[8])
    for name, tensor in weights[8].items():
        if name not in embeddings:
            assert torch.equal(tensor, weights[2][name]), name
    assert any(not torch.equal(weights[8][n], weights[2][n]) for n in embeddings if "word" in n or "tokens" in n)


def test_task_vocabulary_gives_the_template_and_answers_whole_tokens(tiny_corpus_file, tiny_args):
    from reviewtune.models.pretraining import task_vocabulary_texts

    texts = read_corpus(tiny_corpus_file)
    plain = train_tokenizer(texts, "causal", 600)
    taught = train_tokenizer(texts + task_vocabulary_texts("aspects"), "causal", 600)
    for piece in ("\n###출력:", "###명령어: 리뷰를 분석해줘", " 라인(핏)"):
        assert len(taught.tokenize(piece)) < len(plain.tokenize(piece)), piece
    with pytest.raises(ValueError, match="task_vocabulary must be one of"):
        tiny_args("causal", task_vocabulary="nope")
    with pytest.raises(ValueError, match="trained_modules must be one of"):
        tiny_args("causal", trained_modules="blocks")


def test_causal_tokenizer_round_trips_korean_and_marks_sequences(tiny_causal_dir):
    tok = AutoTokenizer.from_pretrained(tiny_causal_dir)
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3
    assert tok.padding_side == "left"
    for text in KOREAN:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
        assert tok.decode(ids, skip_special_tokens=True) == text
    # trl appends eos as text to each completion: it must become the single eos token.
    ids = tok("###출력: 긍정" + tok.eos_token)["input_ids"]
    assert ids[-1] == tok.eos_token_id and ids.count(tok.eos_token_id) == 1
    # The prompt/completion boundary of the instruction text is a token boundary.
    prompt, completion = "###입력: 배송 빨라요\n###명령어: 리뷰를 분석해줘\n###출력:", " 배송1"
    p, pc = tok(prompt)["input_ids"], tok(prompt + completion)["input_ids"]
    assert pc[: len(p)] == p


def test_roberta_tokenizer_round_trips_korean_with_roberta_specials(tiny_roberta_dir):
    tok = AutoTokenizer.from_pretrained(tiny_roberta_dir)
    assert [tok.convert_ids_to_tokens(i) for i in range(4)] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert tok.mask_token == "<mask>" and tok.mask_token_id is not None
    for text in KOREAN:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
        assert tok.decode(ids, skip_special_tokens=True) == text
    pair = tok("리뷰", "배송")["input_ids"]
    assert pair.count(tok.sep_token_id) == 3  # <s> A </s></s> B </s>


@pytest.mark.parametrize("kind", ["causal", "roberta"])
def test_pack_blocks_packed_and_unpacked(kind, tiny_causal_dir, tiny_roberta_dir):
    from reviewtune.models.pretraining import pack_blocks

    tok = AutoTokenizer.from_pretrained(tiny_causal_dir if kind == "causal" else tiny_roberta_dir)
    start, end = (tok.bos_token_id, tok.eos_token_id) if kind == "causal" else (tok.cls_token_id, tok.sep_token_id)
    texts = [KOREAN[0], KOREAN[1], "가격 " * 40] * 5
    n_ids = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    # Unpacked: one <s> text </s> per text, cut to the block size.
    ds, n_tokens = pack_blocks(texts, tok, kind, 16, packing=False)
    assert len(ds) == len(texts)
    assert [len(x) for x in ds["input_ids"]] == [min(n, 14) + 2 for n in n_ids]
    assert all(x[0] == start and x[-1] == end for x in ds["input_ids"])
    # Packed: full blocks only, every text's tokens in order.
    ds, n_tokens = pack_blocks(texts, tok, kind, 16)
    assert n_tokens == sum(n_ids) + len(texts) * (2 if kind == "causal" else 1)
    assert all(len(x) == 16 for x in ds["input_ids"]) and len(ds) == n_tokens // (16 if kind == "causal" else 14)
    body = [x[1:-1] for x in ds["input_ids"]] if kind == "roberta" else ds["input_ids"]
    if kind == "roberta":
        assert all(x[0] == start and x[-1] == end for x in ds["input_ids"])
    docs = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    stream = [t for d in docs for t in ([start, *d, end] if kind == "causal" else [*d, end])]
    flat = [t for b in body for t in b]
    assert flat == stream[: len(flat)]


def test_train_new_from_iterator_adapts_an_existing_tokenizer(tiny_causal_dir):
    base = AutoTokenizer.from_pretrained(tiny_causal_dir)
    texts = ["완전 새로운 단어 뽀송뽀송 뽀송뽀송 뽀송뽀송"] * 50
    new = train_tokenizer(texts, "causal", vocab_size=300, base_tokenizer=base)
    assert new.bos_token == base.bos_token and new.eos_token == base.eos_token
    assert len(new) <= 300
    assert new.decode(new(texts[0])["input_ids"], skip_special_tokens=True) == texts[0]
    assert len(new(texts[0])["input_ids"]) < len(base(texts[0])["input_ids"])


def test_time_budget_stops_training_early(tiny_corpus_file, tmp_path, tiny_args):
    from reviewtune.models.pretraining import pretrain

    args = tiny_args("causal", corpus_file=str(tiny_corpus_file), max_steps=10_000, max_minutes=0.02)
    start = time.monotonic()
    summary = pretrain(args, tmp_path)
    assert summary["stopped_by_time_budget"]
    assert 0 < summary["steps"] < 10_000
    assert time.monotonic() - start < 30
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config.vocab_size == summary["vocab_size"]


# ------------------------------------------------------------------------------------------ corpus


def test_read_corpus_formats_and_counts(tmp_path):
    texts = ["배송 빨라요", "색상 예뻐요"]
    # jsonl: the "text" field; blank lines and empty texts are dropped and counted
    jsonl = tmp_path / "records.jsonl"
    rows = [{"id": "1", "text": texts[0]}, {"id": "2", "text": "  "}, {"id": "3", "text": texts[1]}, {"id": "4"}]
    jsonl.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n", encoding="utf-8")
    got, counts = read_corpus_counts(jsonl)
    assert got == texts
    assert counts["read"] == 5 and counts["kept"] == 2
    assert counts["dropped"] == {"empty_text": 1, "missing_text": 1, "blank_line": 1}
    # .txt with a BOM and NFD Hangul (normalised to NFC, counted)
    txt = tmp_path / "corpus.txt"
    txt.write_text("\ufeff" + unicodedata.normalize("NFD", texts[0]) + "\n\n" + texts[1] + "\n", encoding="utf-8")
    got, counts = read_corpus_counts(txt)
    assert got == texts and counts["nfc_normalised"] == 1
    assert counts["read"] == counts["kept"] + sum(counts["dropped"].values()) == 3
    # .txt.gz
    gz = tmp_path / "corpus.txt.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write("\n".join(texts) + "\n")
    assert read_corpus(gz) == texts
    # NSMC TSV: header skipped, the document column, empty documents and malformed rows counted
    tsv = tmp_path / "ratings_train.txt"
    tsv.write_text(f"id\tdocument\tlabel\n1\t{texts[0]}\t1\n2\t\t0\n3\tbroken\n4\t{texts[1]}\t0\n", encoding="utf-8")
    got, counts = read_corpus_counts(tsv)
    assert got == texts
    assert counts == {"read": 4, "kept": 2, "dropped": {"empty_text": 1, "malformed_row": 1}, "nfc_normalised": 0}


def test_read_corpus_errors_name_file_and_line(tmp_path):
    bad_json = tmp_path / "records.jsonl"
    bad_json.write_text('{"text": "좋아요"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"records\.jsonl:2: invalid JSON"):
        read_corpus(bad_json)
    bad_field = tmp_path / "field.jsonl"
    bad_field.write_text('{"text": "좋아요"}\n{"text": 3}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"field\.jsonl:2: field 'text'"):
        read_corpus(bad_field)
    not_object = tmp_path / "list.jsonl"
    not_object.write_text('{"text": "좋아요"}\n["좋아요"]\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"list\.jsonl:2: expected a JSON object"):
        read_corpus(not_object)
    cp949 = tmp_path / "cp949.txt"
    cp949.write_bytes("배송이 빨라요\n".encode("cp949"))
    with pytest.raises(ValueError, match=r"cp949\.txt:1: not UTF-8"):
        read_corpus(cp949)
    with pytest.raises(FileNotFoundError):
        read_corpus(tmp_path / "missing.txt")


# -------------------------------------------------------------------------------- base-model cache


def test_cache_hash_is_stable_and_covers_corpus_and_config(tmp_path):
    corpus = tmp_path / "a.txt"
    corpus.write_text("배송 빨라요\n", encoding="utf-8")
    args = default_pretrain_args("causal")
    h = base_model_hash(corpus, args)
    assert h == base_model_hash(corpus, default_pretrain_args("causal")) and len(h) == 64
    # The same content at another path, and another output_dir, name the same model.
    copy = tmp_path / "b.txt"
    copy.write_bytes(corpus.read_bytes())
    assert base_model_hash(copy, replace(args, output_dir="elsewhere", corpus_file=str(copy))) == h
    # Corpus content, any config field, and the kind change it.
    corpus.write_text("배송 느려요\n", encoding="utf-8")
    assert base_model_hash(corpus, args) != h
    corpus.write_bytes(copy.read_bytes())
    assert base_model_hash(corpus, replace(args, max_steps=args.max_steps + 1)) != h
    assert base_model_hash(corpus, replace(args, hidden_size=128)) != h
    assert base_model_hash(corpus, default_pretrain_args("roberta")) != h
    assert base_model_dir("causal", h) == cache_root() / f"causal-{h[:12]}"


def test_ensure_base_model_builds_once_then_reuses(tiny_corpus_file, monkeypatch, tiny_args):
    args = tiny_args("roberta", max_steps=10)
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    path, h = ensure_base_model("roberta", tiny_corpus_file, args)
    # The build runs in a child process: the caller's RNG is untouched.
    assert torch.equal(torch.rand(3), expected_draw)
    assert path == base_model_dir("roberta", h) and path.parent == cache_root()
    manifest = json.loads((path / "base_model.json").read_text(encoding="utf-8"))
    assert manifest["hash"] == h and manifest["kind"] == "roberta"
    assert manifest["summary"]["final_eval_loss"] < manifest["summary"]["initial_eval_loss"]
    assert manifest["provenance"]["data_files"]["corpus"]["sha256"]
    assert not [p for p in cache_root().iterdir() if ".tmp-" in p.name]  # temp dir renamed away
    AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    mtime = (path / "model.safetensors").stat().st_mtime_ns

    def no_rebuild(*a, **k):
        raise AssertionError("rebuilt a cached base model")

    monkeypatch.setattr(base_models, "_build", no_rebuild)
    assert ensure_base_model("roberta", tiny_corpus_file, args) == (path, h)
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime
    # A different config is a different model (and would be built).
    with pytest.raises(AssertionError, match="rebuilt"):
        ensure_base_model("roberta", tiny_corpus_file, replace(args, max_steps=11))


def test_concurrent_ranks_build_once_by_rank_0_under_the_lock(tmp_path, monkeypatch, tiny_args):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("배송 빨라요\n", encoding="utf-8")
    me = threading.local()  # each thread plays one rank of a distributed launch
    builders = []

    def fake_build(args, out):  # stands in for the slow pre-training: the lock logic is under test
        builders.append(me.rank)
        time.sleep(0.5)
        summary = {"total_minutes": 0.01, "first_loss": 5.0, "last_loss": 4.0}
        (out / "pretrain_log.json").write_text(json.dumps({"summary": summary}), encoding="utf-8")
        return summary

    monkeypatch.setattr(base_models, "_build", fake_build)
    monkeypatch.setattr(base_models, "_local_rank", lambda: me.rank)
    results = []

    def rank_main(rank: int, delay: float) -> None:
        me.rank = rank
        time.sleep(delay)
        results.append(ensure_base_model("causal", corpus, tiny_args("causal")))

    # Ranks 1 and 2 reach ensure_base_model first; rank 0 still builds, once, and they reuse its model.
    threads = [threading.Thread(target=rank_main, args=(r, d)) for r, d in ((1, 0.0), (2, 0.0), (0, 0.4))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert builders == [0]
    assert len(results) == 3 and len(set(results)) == 1 and (results[0][0] / "base_model.json").is_file()


def test_ensure_base_model_rejects_bad_input(tmp_path, tiny_args):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        ensure_base_model("causal", tmp_path / "missing.txt")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("사이즈 딱 맞아요\n", encoding="utf-8")
    with pytest.raises(ValueError, match="kind"):
        ensure_base_model("causal", corpus, default_pretrain_args("roberta"))
    with pytest.raises(ValueError, match="kind must be"):
        default_pretrain_args("gpt")
    # A directory at the cache path that reviewtune did not finish is never built into.
    args = tiny_args("causal")
    stray = base_model_dir("causal", base_model_hash(corpus, args))
    stray.mkdir(parents=True)
    with pytest.raises(RuntimeError, match="base_model.json"):
        ensure_base_model("causal", corpus, args)


def test_child_env_leaves_the_distributed_job(monkeypatch):
    for k, v in {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "x", "MASTER_PORT": "1",
                 "ACCELERATE_USE_DEEPSPEED": "true", "CUDA_VISIBLE_DEVICES": "4,5"}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    env = base_models._child_env()
    assert not {"RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_DEEPSPEED"} & set(env)
    assert env["CUDA_VISIBLE_DEVICES"] == "5"
    assert str(ROOT) in env["PYTHONPATH"].split(":")


# ----------------------------------------------------------------------------------- recipe, configs


def _load_recipe():
    spec = importlib.util.spec_from_file_location("pretrain_recipe", ROOT / "recipes" / "pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind", ["causal", "roberta"])
def test_shipped_configs_are_the_embedded_defaults(kind):
    from trl import TrlParser

    config = ROOT / "recipes" / "configs" / f"pretrain_{kind}.yaml"
    (args,) = TrlParser(PretrainArguments).parse_args_and_config(["--config", str(config)])
    assert replace(args, corpus_file=None, output_dir=None) == default_pretrain_args(kind)
    nsmc = yaml.safe_load((ROOT / "recipes" / "configs" / "pretrain_nsmc_roberta.yaml").read_text(encoding="utf-8"))
    assert set(nsmc) <= set(PretrainArguments.__dataclass_fields__) and nsmc["kind"] == "roberta"


def test_recipe_writes_model_dir_and_summary_with_provenance(tiny_corpus_file, tmp_path, tiny_model_config):
    from trl import TrlParser

    recipe = _load_recipe()
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"kind": "causal", **tiny_model_config}), encoding="utf-8")
    out = tmp_path / "run"
    cli = ["--config", str(config), "--corpus_file", str(tiny_corpus_file), "--output_dir", str(out)]
    (args,) = TrlParser(PretrainArguments).parse_args_and_config([*cli, "--max_steps", "12"])
    assert args.max_steps == 12 and args.hidden_size == tiny_model_config["hidden_size"]  # CLI overrides YAML
    result = recipe.main(args)
    saved = json.loads((out / "pretrain_summary.json").read_text(encoding="utf-8"))
    assert saved["steps"] == 12 == result["steps"]
    assert saved["provenance"]["data_files"]["corpus"]["sha256"] and saved["provenance"]["seed"] == 0
    assert saved["last_loss"] < saved["first_loss"]
    AutoModelForCausalLM.from_pretrained(out)
    weights = (out / "model.safetensors").read_bytes()
    assert recipe.main(args) == saved  # a finished model is never overwritten: re-launched, it is kept as it is
    assert (out / "model.safetensors").read_bytes() == weights
