"""vidtune: video and image caption datasets to finetuned, evaluated vision-language models.

The Snakemake rules under ``rules/`` call thin scripts under ``workflow/scripts/``; the logic lives here,
one module per pipeline stage.
"""

__version__ = "0.1.0"
