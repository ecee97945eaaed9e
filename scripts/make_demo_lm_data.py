"""Write the LM demo's shipped personalization data: WordNet 3.0 adverb definitions (Debian wordnet-base;
WordNet license, permissive), a style in none of the demo bank's adapters (verbs, adjectives, fortunes).

    python scripts/make_demo_lm_data.py    # edge_eigenlora/data/demo_lm_adverbs_{train,heldout}.jsonl
"""

from pathlib import Path

from edge_eigenlora.lm_data import definition_examples, write_examples_jsonl

TRAIN, HELD_OUT = 160, 64
OUT = Path(__file__).resolve().parents[1] / "edge_eigenlora" / "data"


def main() -> None:
    examples = definition_examples("adverb", TRAIN + HELD_OUT, seed=7)
    OUT.mkdir(parents=True, exist_ok=True)
    write_examples_jsonl(examples[:TRAIN], OUT / "demo_lm_adverbs_train.jsonl")
    write_examples_jsonl(examples[TRAIN:], OUT / "demo_lm_adverbs_heldout.jsonl")
    print(f"wrote {TRAIN} + {HELD_OUT} examples to {OUT}")


if __name__ == "__main__":
    main()
