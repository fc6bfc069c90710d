"""bootembed: bootstrap sentence-embedding models for low-resource languages on Ray.

Stages (one module each): seeds -> synthesize -> filter -> train -> evaluate; `pipeline.run`
chains them, `pipeline.cli` is the `bootembed` command, `serve` deploys the trained encoders.
"""

__version__ = "0.1.0"
