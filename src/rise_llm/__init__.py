"""rise-llm: teach language models to improve their own answers over several turns.

Implements RISE (Recursive Introspection, Qu et al., arXiv 2407.18219). The pipeline stages live
in modules named after them: `tasks` (problems and verifiers), `engines` (sampling), `rollout`
(multi-turn episodes), `metrics`, `evaluate`, `toy_model` and `cli`.
"""

__version__ = "0.1.0"
