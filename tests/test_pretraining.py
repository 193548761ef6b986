def test_fixtures_load(tiny_causal_dir, tiny_roberta_dir):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(tiny_causal_dir)
    AutoModelForSequenceClassification.from_pretrained(tiny_roberta_dir, num_labels=2)
    AutoTokenizer.from_pretrained(tiny_roberta_dir)
