"""The prompting paradigms: pattern-verbalizer training (PET), in-context learning, instruction formats and
chat templates (supervised fine-tuning), and chain of thought. Scoring and sampling go through
plmkit.generation; task metrics through plmkit.evaluate."""
