"""InternVL checkpoints in InternVL's original layout (``model_type: internvl_chat``, the folders OpenGVLab
publishes as InternVL2, 2.5, 3, 3.5 and every guide downloads) and transformers' native InternVL.

- :mod:`.layout` reads an original folder's config.json and says whether it converts (no torch, used when
  the workflow is parsed);
- :mod:`.chat_templates` renders InternVL's conversation templates as chat templates;
- :mod:`.weights` maps tensor names and shapes between the layouts, both ways;
- :mod:`.convert` writes the native folder (weights streamed shard by shard, config, tokenizer, processor);
- :mod:`.export` writes a native model back in the original layout (merged models for InternVL's own tools).

No Python file of a checkpoint folder is ever imported or run.
"""
